"""What a `_target_` class declares, read from its source file without importing it.

Validating a config checks the keys of `method:`, `dataset:` and `model:` against the constructor of the class
each names, and lists the options of a group that fit a method (their classes' `provides`, `kind`,
`model_kinds`, ...). Importing those classes imports torch, Lightning or transformers (seconds each), so a
config error would cost that long before it is shown. This module reads the same facts with `ast`: the
`__init__` signature and its annotations, and the class attributes bound to literals, following the bases
through the modules they are imported from.

It reads only plain source inside the repository, and says so (`NotStatic`) wherever the source does not say
it plainly: a module outside the repository, an extension module, a decorated class or `__init__`, a
metaclass, `__new__`, `__init_subclass__`, class-level code other than assignments and definitions, an
attribute bound to an expression or assigned to from elsewhere in its module, an annotation that names
anything but builtins, `typing` and `collections.abc`. Callers then import the class. A module that is already
imported is never read: its class is used as it is.
"""

from __future__ import annotations

import ast
import builtins
import collections.abc
import functools
import importlib.util
import inspect
import sys
import typing
from pathlib import Path
from typing import Any

from runner import REPO_ROOT

_TYPING_MODULES = {"typing": typing, "collections.abc": collections.abc}
_BUILTIN_TYPES = {n: getattr(builtins, n) for n in ("int", "float", "str", "bool", "bytes", "list", "dict", "tuple",
                                                     "set", "frozenset", "type", "object", "complex")}
_DYNAMIC_DUNDERS = {"__new__", "__init_subclass__", "__class_getitem__", "__getattr__", "__getattribute__",
                    "__signature__", "__set_name__"}


class NotStatic(Exception):
    """The source does not say it plainly: import the class to know."""


_MISSING = object()


@functools.cache
def module_file(name: str) -> Path | None:
    """The source file of module `name` inside the repository, found without importing it (nor its packages);
    None where it is outside the repository, not plain source, or not found."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        origin = spec.origin
    else:
        dirs = list(spec.submodule_search_locations or [])
        for i, part in enumerate(parts[1:], start=1):
            pkg = sys.modules.get(".".join(parts[:i]))
            if pkg is not None:
                dirs = list(getattr(pkg, "__path__", []))
            found = None
            for d in dirs:
                if (Path(d) / part / "__init__.py").is_file():
                    found = ("package", Path(d) / part)
                    break
                if (Path(d) / f"{part}.py").is_file():
                    found = ("module", Path(d) / f"{part}.py")
                    break
            if found is None:
                return None
            kind, path = found
            if i == len(parts) - 1:
                origin = str(path / "__init__.py") if kind == "package" else str(path)
            elif kind == "package":
                dirs = [str(path)]
            else:
                return None
    if not origin or not origin.endswith(".py"):
        return None
    path = Path(origin).resolve()
    if not path.is_file() or not path.is_relative_to(REPO_ROOT):
        return None
    top = path.relative_to(REPO_ROOT).parts[0]  # the repository's own packages, not a virtualenv inside it
    return path if top in (parts[0], f"{parts[0]}.py") else None


def missing_module(name: str) -> bool:
    """Whether module `name` plainly does not exist, found without importing anything: no top-level module of
    that name, or, in one of the repository's packages, no file or directory for one of its parts."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return True
    dirs = [Path(d) for d in spec.submodule_search_locations or []]
    for i, part in enumerate(parts[1:], start=1):
        if not dirs or any(not d.resolve().is_relative_to((REPO_ROOT / parts[0]).resolve()) for d in dirs):
            return False  # not the repository's own package: its import will tell
        packages = [d / part for d in dirs if (d / part).is_dir()]
        if packages:
            dirs = packages
            continue
        is_module = any((d / f"{part}.py").is_file() or any(d.glob(f"{part}.*.so")) for d in dirs)
        return not is_module or i < len(parts) - 1
    return False


class _Module:
    """One parsed module: its top-level classes, what its names are imported from, and what it leaves open."""

    def __init__(self, name: str, path: Path):
        self.name = name
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.classes: dict[str, ast.ClassDef] = {}
        self.imports: dict[str, tuple[str, str | None]] = {}  # local name -> (module, attribute or None)
        self.rebound: set[str] = set()  # names bound more than once at module level
        self.open = False  # a module __getattr__ or a star import: names may come from anywhere
        bound: set[str] = set()

        def bind(local: str) -> None:
            if local in bound:
                self.rebound.add(local)
            bound.add(local)

        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
                bind(node.name)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                for a in node.names:
                    if a.name == "*":
                        self.open = True
                        continue
                    self.imports[a.asname or a.name] = (module, a.name)
                    bind(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    local = a.asname or a.name.split(".")[0]
                    self.imports[local] = (a.name if a.asname else a.name.split(".")[0], None)
                    bind(local)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name == "__getattr__":
                    self.open = True
                bind(node.name)
            else:  # an assignment, or code (if/try/for): what it binds is not plainly a class or an import
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                        bind(sub.id)
                        self.rebound.add(sub.id)
                    elif isinstance(sub, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.rebound.add(sub.name)
                    elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                        self.rebound.update((a.asname or a.name).split(".")[0] for a in sub.names)
        # attributes of this module's classes assigned anywhere in it (Seq2SeqData.module_class = ...) or set
        # with setattr: their values are not the class body's
        self.patched: dict[str, set[str]] = {}
        for sub in ast.walk(tree):
            targets = (sub.targets if isinstance(sub, ast.Assign) else
                       [sub.target] if isinstance(sub, (ast.AugAssign, ast.AnnAssign)) else
                       sub.targets if isinstance(sub, ast.Delete) else [])
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    self.patched.setdefault(t.value.id, set()).add(t.attr)
            if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("setattr", "delattr")
                    and sub.args and isinstance(sub.args[0], ast.Name)):
                self.patched.setdefault(sub.args[0].id, set()).add("*")

    def namespace(self) -> dict[str, Any]:
        """The names an annotation here may use: builtins, and what it imports from typing / collections.abc."""
        ns: dict[str, Any] = dict(_BUILTIN_TYPES)
        ns["None"] = None
        for local, (module, attr) in self.imports.items():
            if module in _TYPING_MODULES and attr is not None and hasattr(_TYPING_MODULES[module], attr):
                ns[local] = getattr(_TYPING_MODULES[module], attr)
            elif attr is None and module in _TYPING_MODULES:
                ns[local] = _TYPING_MODULES[module]
        return ns


@functools.cache
def _module(name: str) -> _Module | None:
    path = module_file(name)
    if path is None:
        return None
    try:
        return _Module(name, path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _literal(node: ast.expr) -> Any:
    """The value of a literal expression (also frozenset(...), set(...), tuple(...) of one); NotStatic otherwise."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set", "tuple")
            and not node.keywords and len(node.args) <= 1):
        return getattr(builtins, node.func.id)(*(_literal(a) for a in node.args))
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise NotStatic(ast.unparse(node)) from e


def _annotation(node: ast.expr, ns: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError as e:
            raise NotStatic(node.value) from e
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Call, ast.Lambda, ast.NamedExpr)) or (
                isinstance(sub, ast.Name) and sub.id not in ns):
            raise NotStatic(ast.unparse(node))
    try:
        value = eval(compile(ast.Expression(node), "<annotation>", "eval"), {"__builtins__": {}}, ns)  # noqa: S307
    except Exception as e:  # noqa: BLE001  (an attribute the namespace lacks, a subscript typing refuses)
        raise NotStatic(ast.unparse(node)) from e
    return type(None) if value is None else value


class _Object:
    """`object`, the root of every static class's bases."""

    name = "builtins.object"


# Classes outside the repository that its classes (and plug-ins) derive from, read as defining none of the names
# the runner asks a builder's class for (PROTOCOL_NAMES) and, like object, no __new__, metaclass or
# __init_subclass__; anything else of theirs is not known here. tests/test_static.py checks this of the
# imported classes.
EXTERNAL_BASES = frozenset({"torch.nn.Module", "torch.nn.modules.module.Module"})
PROTOCOL_NAMES = frozenset({"kind", "provides", "model_kinds", "needs_task", "needs_model", "supports_fsdp",
                            "max_seq_len", "hf_auto", "eval_only_args", "module_class"})


class _External:
    def __init__(self, name: str):
        self.name = name


class StaticClass:
    """A class as its source declares it. Attribute access reads the class attributes bound to literals along
    its bases (`c.provides`, `getattr(c, "kind", default)`); an attribute the source leaves open raises
    NotStatic (not an AttributeError: getattr's default does not hide it)."""

    def __init__(self, module: _Module, node: ast.ClassDef, bases: list[StaticClass | _Object | _External]):
        d = object.__setattr__
        d(self, "_s_name", f"{module.name}.{node.name}")
        d(self, "_s_module", module)
        d(self, "_s_node", node)
        d(self, "_s_bases", bases)
        attrs: dict[str, Any] = {}
        unknown: set[str] = set(module.patched.get(node.name, ()))
        defined: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for stmt in node.body:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) or isinstance(stmt, ast.Pass):
                continue
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defined[stmt.name] = stmt
                unknown.add(stmt.name)
            elif isinstance(stmt, ast.ClassDef):
                unknown.add(stmt.name)
            elif isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
                for t in stmt.targets:
                    try:
                        attrs[t.id] = _literal(stmt.value)
                    except NotStatic:
                        unknown.add(t.id)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if stmt.value is not None:
                    try:
                        attrs[stmt.target.id] = _literal(stmt.value)
                    except NotStatic:
                        unknown.add(stmt.target.id)
            else:
                raise NotStatic(f"{self._s_name}: class body statement at line {stmt.lineno}")
        for name in unknown:
            attrs.pop(name, None)
        if "*" in unknown or _DYNAMIC_DUNDERS & set(defined):
            raise NotStatic(f"{self._s_name}: built dynamically")
        d(self, "_s_attrs", attrs)
        d(self, "_s_unknown", unknown)
        d(self, "_s_defined", defined)
        d(self, "_s_mro", _c3(self))

    def __repr__(self) -> str:
        return f"<static class {self._s_name}>"

    def __getattr__(self, name: str) -> Any:
        mro = self.__dict__.get("_s_mro")
        if mro is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        for cls in mro:
            if isinstance(cls, _Object):
                if hasattr(object, name):
                    return getattr(object, name)
                break
            if isinstance(cls, _External):
                if name in PROTOCOL_NAMES:
                    continue
                raise NotStatic(f"{cls.name}.{name}")
            if name in cls._s_attrs:
                return cls._s_attrs[name]
            if name in cls._s_unknown:
                raise NotStatic(f"{cls._s_name}.{name}")
        raise AttributeError(f"type object '{self._s_node.name}' has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("a static class is read-only")


def ancestors(cls: StaticClass) -> list[str]:
    """The dotted names of the repository classes `cls` derives from, nearest first (its MRO less itself and what
    lies outside the repository)."""
    return [c._s_name for c in cls._s_mro[1:] if isinstance(c, StaticClass)]


def class_name(cls: StaticClass) -> str:
    """The name the class statement gives it (its __name__)."""
    return cls._s_node.name


def signature(cls: StaticClass) -> tuple[inspect.Signature, dict[str, Any]]:
    """(the signature `inspect.signature` gives of the class, the type hints of that `__init__`)."""
    for c in cls._s_mro:
        if isinstance(c, _Object):
            return inspect.Signature(), {}
        if isinstance(c, _External):
            raise NotStatic(f"{c.name}.__init__")
        if "__init__" in c._s_defined:
            return _signature(c._s_defined["__init__"], c._s_module)
        if "__init__" in c._s_unknown:
            raise NotStatic(f"{c._s_name}.__init__")
    raise NotStatic(cls._s_name)


def _signature(fn: ast.FunctionDef | ast.AsyncFunctionDef, module: _Module) -> tuple[inspect.Signature, dict[str, Any]]:
    if fn.decorator_list:
        raise NotStatic(f"{module.name}: decorated __init__")
    ns = module.namespace()
    a = fn.args
    P = inspect.Parameter
    positional = [*a.posonlyargs, *a.args]
    if not positional:
        raise NotStatic(f"{module.name}: __init__ without self")
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    params, hints = [], {}

    def default(node):
        if node is None:
            return P.empty
        try:
            return _literal(node)
        except NotStatic:
            return _MISSING  # a default the source computes: only its presence matters here

    for i, (arg, dflt) in enumerate(zip(positional, defaults)):
        if i == 0:
            continue  # self
        kind = P.POSITIONAL_ONLY if i < len(a.posonlyargs) else P.POSITIONAL_OR_KEYWORD
        params.append(P(arg.arg, kind, default=default(dflt)))
    if a.vararg is not None:
        params.append(P(a.vararg.arg, P.VAR_POSITIONAL))
    for arg, dflt in zip(a.kwonlyargs, a.kw_defaults):
        params.append(P(arg.arg, P.KEYWORD_ONLY, default=default(dflt)))
    if a.kwarg is not None:
        params.append(P(a.kwarg.arg, P.VAR_KEYWORD))
    all_args = [*positional[1:], *([a.vararg] if a.vararg else []), *a.kwonlyargs, *([a.kwarg] if a.kwarg else [])]
    for arg in all_args:
        if arg.annotation is not None:
            hints[arg.arg] = _annotation(arg.annotation, ns)
    return inspect.Signature(params), hints


def _c3(cls: StaticClass) -> list[StaticClass | _Object | _External]:
    """The method resolution order (C3), as Python computes it."""
    seqs = [list(b._s_mro) if isinstance(b, StaticClass) else [b, _OBJECT] if isinstance(b, _External) else [b]
            for b in cls._s_bases] + [list(cls._s_bases)]
    out: list[StaticClass | _Object | _External] = [cls]
    while True:
        seqs = [s for s in seqs if s]
        if not seqs:
            return out
        for s in seqs:
            head = s[0]
            if not any(head in t[1:] for t in seqs):
                break
        else:
            raise NotStatic(f"{cls._s_name}: no consistent method resolution order")
        out.append(head)
        for t in seqs:
            if t and t[0] is head:
                del t[0]


_OBJECT = _Object()
_reading: set[tuple[str, str]] = set()


@functools.cache
def _static(module_name: str, name: str) -> StaticClass:
    """The class `name` of module `module_name`, read from its source (imported or not: its bases are read
    the same way). NotStatic where the source does not say it plainly; AttributeError where the module has no
    such name at all."""
    key = (module_name, name)
    if key in _reading:
        raise NotStatic(f"{module_name}.{name}: a cycle")
    module = _module(module_name)
    if module is None:
        raise NotStatic(module_name)
    if name in module.rebound:
        raise NotStatic(f"{module_name}.{name}: not plainly bound")
    _reading.add(key)
    try:
        if name in module.imports:  # a name this module imports (re-exports)
            source, attr = module.imports[name]
            if attr is None:
                raise NotStatic(f"{module_name}.{name} is a module")
            return _static_or_not(source, attr)
        node = module.classes.get(name)
        if node is None:
            if module.open:
                raise NotStatic(f"{module_name}.{name}")
            raise AttributeError(f"module '{module_name}' has no attribute '{name}'")
        if node.decorator_list or node.keywords:
            raise NotStatic(f"{module_name}.{name}: decorated or with a metaclass")
        bases = [_base(module, b) for b in node.bases]
        return StaticClass(module, node, bases or [_OBJECT])
    finally:
        _reading.discard(key)


def _static_or_not(module_name: str, name: str) -> StaticClass:
    """_static for a name another module refers to: one it lacks is for the import to report."""
    try:
        return _static(module_name, name)
    except AttributeError as e:
        raise NotStatic(f"{module_name}.{name}") from e


def _base(module: _Module, node: ast.expr) -> StaticClass | _Object | _External:
    chain = []
    while isinstance(node, ast.Attribute):
        chain.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise NotStatic(f"{module.name}: base {ast.unparse(node)}")
    head = node.id
    if not chain and head == "object" and head not in module.imports and head not in module.classes:
        return _OBJECT
    if not chain and head in module.classes:
        return _static_or_not(module.name, head)
    if head not in module.imports:
        raise NotStatic(f"{module.name}: base {head}")
    source, attr = module.imports[head]
    path = [source, *([attr] if attr else []), *chain]
    if ".".join(path) in EXTERNAL_BASES:
        return _EXTERNAL.setdefault(".".join(path), _External(".".join(path)))
    # `from pkg import mod` then `mod.Class`, or `import pkg.mod` then `pkg.mod.Class`: the class is the last part
    return _static_or_not(".".join(path[:-1]), path[-1])


_EXTERNAL: dict[str, _External] = {}


def lookup(path: str) -> StaticClass | None:
    """The static reading of the class `path` (a dotted `_target_`), or None where it is better imported: its
    module is imported already (then the class itself is free and exact) or the source does not say it
    plainly. Raises AttributeError where the module plainly has no such name."""
    module, _, name = path.rpartition(".")
    if not module or module in sys.modules:
        return None
    try:
        return _static(module, name)
    except NotStatic:
        return None


# Packages whose import alone takes a second or more.
HEAVY = frozenset({"torch", "lightning", "pytorch_lightning", "transformers", "datasets", "triton", "peft",
                   "accelerate", "tokenizers", "sklearn", "scipy", "pandas", "wandb"})
# What validating a config imports anyway (numpy: tasks/common.py), and the standard library.
_LIGHT = frozenset({"omegaconf", "hydra", "numpy", "yaml"})


def _imported_at_load(module: str) -> list[str]:
    """The modules importing `module` imports before anything of it runs: its parent packages, then what its
    body imports outside functions and `if TYPE_CHECKING:` blocks. Raises NotStatic where it cannot be read."""
    parts = module.split(".")
    out = [".".join(parts[:i]) for i in range(1, len(parts))]
    path = module_file(module)
    if path is None:
        raise NotStatic(module)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.Import):
                out.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join([*base, *([node.module] if node.module else [])])
                out.append(mod)
                out.extend(f"{mod}.{a.name}" for a in node.names if module_file(f"{mod}.{a.name}") is not None)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With)):
                visit(node.body)
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return out


def imports_heavy(module: str) -> bool:
    """Whether importing `module` would import one of HEAVY (torch, Lightning, transformers, ...): False where
    it is imported already or its imports, followed through the repository's modules, reach none of them;
    True also where that cannot be read (a module outside the repository)."""
    return module not in sys.modules and _imports_heavy(module)


@functools.cache
def _imports_heavy(module: str) -> bool:
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or m in sys.modules:
            continue
        seen.add(m)
        if m.split(".")[0] in HEAVY:
            return True
        if module_file(m) is None:  # outside the repository: light only if it is one of these
            if m.split(".")[0] in sys.stdlib_module_names or m.split(".")[0] in _LIGHT:
                continue
            return True
        try:
            todo.extend(_imported_at_load(m))
        except (NotStatic, OSError, SyntaxError, UnicodeDecodeError):
            return True
    return False
