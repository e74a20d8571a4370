"""runner/static.py reads what a `_target_` class declares from its source, so that a config error costs no
torch import. What it reads must be what the imported class says: the signature and type hints of every
shipped builder, and the attributes the runner asks of them; where the source does not say it plainly, it
says so (NotStatic) and the caller imports."""

from __future__ import annotations

import inspect
import sys
import textwrap
import typing

import pytest

from runner import static
from runner.config import group_options, import_target, option_target

_ABSENT = object()


def _targets() -> list[str]:
    """Every `_target_` of a shipped option, and the repository bases of each."""
    found = set()
    for group in ("method", "dataset", "model"):
        for option in group_options(group):
            target = option_target(group, option)
            if target:
                found.add(target)
    out = set()
    for target in found:
        cls = import_target(target)
        for base in inspect.getmro(cls) if inspect.isclass(cls) else [cls]:
            if static.module_file(base.__module__) is not None and base.__qualname__ == base.__name__:
                out.add(f"{base.__module__}.{base.__name__}")
    return sorted(out)


def _read(target: str, monkeypatch) -> static.StaticClass | None:
    """The static reading of `target` as preflight gets it (its module not imported yet)."""
    module = target.rpartition(".")[0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    return static.lookup(target)


def _same_signature(declared: inspect.Signature, real: inspect.Signature) -> bool:
    def shape(sig):
        return [(p.name, p.kind, p.default is p.empty) for p in sig.parameters.values()]

    return shape(declared) == shape(real)


@pytest.mark.parametrize("target", _targets())
def test_the_static_reading_is_the_imported_class(target, monkeypatch):
    real = import_target(target)
    declared = _read(target, monkeypatch)
    if declared is None:
        pytest.skip(f"{target}: not read statically (imported instead)")
    try:
        sig, hints = static.signature(declared)
    except static.NotStatic:
        sig = None
    if sig is not None:
        assert _same_signature(sig, inspect.signature(real)), (sig, inspect.signature(real))
        real_hints = typing.get_type_hints(real.__init__)
        real_hints.pop("return", None)
        assert hints == real_hints
    for name in static.PROTOCOL_NAMES:
        try:
            value = getattr(declared, name, _ABSENT)
        except static.NotStatic:
            continue
        assert value == getattr(real, name, _ABSENT), name


def test_the_builders_of_the_default_config_are_read_statically(monkeypatch):
    for target in ("methods.base.Method", "tasks.lm_corpus.LMCorpus", "models.llama.Llama", "methods.losses.eisl.EISL"):
        declared = _read(target, monkeypatch)
        assert declared is not None, target
        static.signature(declared)


@pytest.mark.parametrize("name", sorted(static.EXTERNAL_BASES))
def test_the_external_bases_define_none_of_the_protocol_names(name):
    cls = import_target(name)
    assert type(cls) is type  # no metaclass
    for c in cls.__mro__[:-1]:  # no __new__, __init_subclass__ or __signature__ of its own or its bases'
        assert not {"__new__", "__init_subclass__", "__signature__"} & set(vars(c)), c
    assert not [n for n in static.PROTOCOL_NAMES if hasattr(cls, n)]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package `pkg_static` in a fake repository root: write(name, source) adds pkg_static/<name>.py."""
    (tmp_path / "pkg_static").mkdir()
    (tmp_path / "pkg_static" / "__init__.py").write_text("")
    monkeypatch.setattr(static, "REPO_ROOT", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for fn in (static.module_file, static._module, static._static, static._imports_heavy):
        fn.cache_clear()
    yield lambda name, src: (tmp_path / "pkg_static" / f"{name}.py").write_text(textwrap.dedent(src))
    for fn in (static.module_file, static._module, static._static, static._imports_heavy):
        fn.cache_clear()


def test_bases_attributes_and_signature_follow_the_imports(package):
    package("base", """
        class Base:
            kind = "causal-lm"
            needs = frozenset({"a"})

            def __init__(self, name: str = "x", lr: float = 1e-3, *, steps: int | None = None, **extra):
                pass
    """)
    package("child", """
        from pkg_static.base import Base

        class Child(Base):
            provides = ("b",)
    """)
    c = static.lookup("pkg_static.child.Child")
    assert c.kind == "causal-lm" and c.needs == frozenset({"a"}) and c.provides == ("b",)
    assert getattr(c, "model_kinds", None) is None  # not defined anywhere: getattr's default
    sig, hints = static.signature(c)
    assert str(sig) == "(name='x', lr=0.001, *, steps=None, **extra)"
    assert hints == {"name": str, "lr": float, "steps": int | None}
    assert not static.imports_heavy("pkg_static.child")
    assert "pkg_static.child" not in sys.modules


@pytest.mark.parametrize("source,asked", [
    ("import functools\n@functools.total_ordering\nclass C:\n    kind = 'x'\n", "kind"),      # decorated
    ("class C:\n    if True:\n        kind = 'x'\n", "kind"),                               # code in the body
    ("K = 'x'\nclass C:\n    kind = K\n", "kind"),                                           # not a literal
    ("class C:\n    kind = 'x'\nC.kind = 'y'\n", "kind"),                                    # assigned from outside
    ("class C:\n    def __new__(cls):\n        pass\n", "kind"),                             # __new__
    ("import torch\nclass C:\n    def __init__(self, x: torch.Tensor):\n        pass\n", "__init__"),  # a torch annotation
])
def test_what_the_source_does_not_say_plainly_is_imported(package, source, asked):
    package("dyn", source)
    c = static.lookup("pkg_static.dyn.C")
    if c is None:
        return  # not read at all: imported
    with pytest.raises(static.NotStatic):
        if asked == "__init__":
            static.signature(c)
        else:
            getattr(c, asked)


def test_a_name_the_module_lacks_is_an_attribute_error(package):
    package("m", "class C:\n    pass\n")
    with pytest.raises(AttributeError, match="has no attribute 'D'"):
        static.lookup("pkg_static.m.D")


def test_an_imported_module_is_not_read():
    assert static.lookup("runner.config.ModelSchema") is None  # imported already: the class itself is used


def test_heavy_imports_are_seen_through_the_repository(package, monkeypatch):
    monkeypatch.setattr(static, "HEAVY", frozenset({"pkg_heavy_stand_in"}))  # (torch may be imported here already)
    package("light", "import json\nfrom pkg_static import heavy_later\n")
    package("heavy_later", "import pkg_heavy_stand_in\n")
    package("typed", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg_heavy_stand_in\n")
    assert static.imports_heavy("pkg_static.light")
    assert not static.imports_heavy("pkg_static.typed")


def test_a_module_that_plainly_does_not_exist():
    assert static.missing_module("methods.nowhere") and static.missing_module("methods.base.Method")
    assert static.missing_module("no_such_top_level_module_xyz")
    assert not static.missing_module("methods.losses.eisl") and not static.missing_module("methods.losses")
