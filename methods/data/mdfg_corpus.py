"""Synthetic Chinese web documents with planted labels, for MDFG-tool (methods/data/mdfg_filter.py).

Words come from a real offline word list: wordfreq's Chinese words (top 6,000 by frequency, pure CJK, unchanged
by opencc t2s), sampled by their wordfreq frequency (Zipf). Every document has planted labels:
    quality   per line: 1 a prose line (sentences of Zipf-sampled words with "，" / "。"), 0 a boilerplate line
              (navigation/ad terms mixed with uniformly drawn words, joined by separators, no sentences)
    domains   0-2 of the five categories: 2-5 distinct keywords of each (2: the keyword rule misses it) and
              that category's own context words (30 wordfreq words per category) in its prose lines
    toxic     1: one line carries 2-4 insults (TOXIC_WORDS)
Kinds: clean (all prose), mixed (1-2 boilerplate lines among prose), low (all boilerplate), toxic. Every
generated document passes the stage-1 rules (regenerated otherwise), except the rule probes: for each of the six
rules exactly one document on each side of its threshold (PROBES), so each rule must drop exactly its own.
Labelled training sets for the classifiers (`labelled_lines`) are drawn from the same generator with other seeds.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

import numpy as np

from methods.data.mdfg_filter import DOMAIN_KEYWORDS, SENSITIVE_WORDS, rule_verdict, to_simplified

TOXIC_WORDS = ("傻瓜", "笨蛋", "废物", "滚开", "蠢货", "白痴", "闭嘴", "混蛋", "去死", "垃圾人")
BOILERPLATE = ("点击", "下载", "登录", "注册", "免费", "客服", "热线", "首页", "上一页", "下一页", "版权所有",
               "联系我们", "扫码", "关注", "优惠", "包邮", "广告", "返回顶部", "网站地图", "更多")
KINDS = ("clean", "mixed", "low", "toxic")
KIND_PROBS = (0.45, 0.25, 0.15, 0.15)
PROBES = ("length", "line_length", "chinese_share", "traditional", "sensitive", "repetition")


@lru_cache(maxsize=1)
def vocabulary() -> tuple[tuple[str, ...], np.ndarray, dict[str, tuple[str, ...]]]:
    """(general words, their sampling probabilities, context words per category) from wordfreq."""
    from wordfreq import get_frequency_dict, top_n_list

    reserved = set(SENSITIVE_WORDS) | set(TOXIC_WORDS) | set(BOILERPLATE) | {w for ws in DOMAIN_KEYWORDS.values()
                                                                             for w in ws}
    words = [w for w in top_n_list("zh", 6000) if re.fullmatch(r"[\u4e00-\u9fa5]+", w) and to_simplified(w) == w
             and not any(r in w or w in r for r in reserved)]
    rng = np.random.default_rng(12345)
    pool = [words[i] for i in rng.permutation(np.arange(200, 3000))[: 30 * len(DOMAIN_KEYWORDS)]]
    context = {d: tuple(pool[30 * k:30 * k + 30]) for k, d in enumerate(DOMAIN_KEYWORDS)}
    used = set(pool)
    general = tuple(w for w in words if w not in used)
    freq = get_frequency_dict("zh")
    p = np.array([freq[w] for w in general])
    return general, p / p.sum(), context


def _words(rng, n: int, uniform: bool = False) -> list[str]:
    general, p, _ = vocabulary()
    idx = rng.integers(len(general), size=n) if uniform else rng.choice(len(general), size=n, p=p)
    return [general[i] for i in idx]


def prose_line(rng, domains=(), insert: list[str] | None = None) -> str:
    """2-4 sentences of 5-12 Zipf words (a category's context word at a quarter of the slots), `insert` words
    placed at random slots."""
    _, _, context = vocabulary()
    sentences = []
    for _ in range(int(rng.integers(2, 5))):
        ws = _words(rng, int(rng.integers(5, 13)))
        if domains:
            for i in range(len(ws)):
                if rng.random() < 0.25:
                    ctx = context[domains[int(rng.integers(len(domains)))]]
                    ws[i] = ctx[int(rng.integers(len(ctx)))]
        sentences.append(ws)
    for w in insert or []:
        s = sentences[int(rng.integers(len(sentences)))]
        s.insert(int(rng.integers(len(s) + 1)), w)
    out = ""
    for ws in sentences:
        cut = int(rng.integers(2, len(ws)))
        out += "".join(ws[:cut]) + "，" + "".join(ws[cut:]) + "。"
    return out


def boilerplate_line(rng) -> str:
    """12-25 items, each a navigation/ad term (40%) or a uniformly drawn word, joined by a separator."""
    n = int(rng.integers(12, 26))
    uni = _words(rng, n, uniform=True)
    items = [BOILERPLATE[int(rng.integers(len(BOILERPLATE)))] if rng.random() < 0.4 else uni[i] for i in range(n)]
    return [" ", " | ", "·", " > "][int(rng.integers(4))].join(items)


def toxic_line(rng, domains=()) -> str:
    k = int(rng.integers(2, 5))
    ins = [TOXIC_WORDS[i] for i in rng.choice(len(TOXIC_WORDS), size=k, replace=False)]
    return prose_line(rng, domains, ins)[:-1] + "！"


def document(rng, kind: str) -> dict:
    """One document of `kind` with its planted labels (regenerated until it passes the stage-1 rules)."""
    while True:
        n_dom = int(rng.choice([0, 1, 2], p=[0.2, 0.6, 0.2]))
        domains = sorted(str(d) for d in rng.choice(list(DOMAIN_KEYWORDS), size=n_dom, replace=False))
        n_lines = int(rng.integers(3, 8))
        if kind == "low":
            quality = [0] * n_lines
        elif kind == "mixed":
            quality = [1] * n_lines
            for i in rng.choice(n_lines, size=int(rng.integers(1, 3)), replace=False):
                quality[int(i)] = 0
        else:
            quality = [1] * n_lines
        toxic_at = int(rng.integers(n_lines)) if kind == "toxic" else -1
        inserts: list[list[str]] = [[] for _ in range(n_lines)]
        prose = [i for i, q in enumerate(quality) if q] or list(range(n_lines))
        for d in domains:
            m = int(rng.integers(2, 6))
            for w in rng.choice(DOMAIN_KEYWORDS[d], size=m, replace=False):
                inserts[prose[int(rng.integers(len(prose)))]].append(str(w))
        lines = []
        for i, q in enumerate(quality):
            if i == toxic_at:
                lines.append(toxic_line(rng, domains))
            elif q:
                lines.append(prose_line(rng, domains, inserts[i]))
            else:  # a low line carries its keywords as items
                line = boilerplate_line(rng)
                lines.append(" ".join([line, *inserts[i]]) if inserts[i] else line)
        text = "\n".join(lines)
        if rule_verdict(text) is None:
            return {"text": text, "kind": kind, "quality": quality, "domains": domains,
                    "toxic": int(kind == "toxic"), "probe": None}


def _plain(rng, n: int) -> str:
    """Exactly n Chinese characters of Zipf words (no sensitive word), one line."""
    while True:
        s = "".join(_words(rng, n))[:n]
        if len(s) == n and not any(w in s for w in SENSITIVE_WORDS):
            return s


def probe_documents(seed: int = 0) -> list[dict]:
    """Two documents per stage-1 rule, just on either side of its threshold (official preprocess.py)."""
    rng = np.random.default_rng([seed, 7])
    out = []

    def add(rule, keep, text):
        out.append({"text": text, "kind": "probe", "quality": None, "domains": None, "toxic": None,
                    "probe": {"rule": rule, "keep": keep}})

    base = _plain(rng, 201)
    add("length", False, base[:200])          # len <= 200 is dropped (the code's `<=`)
    add("length", True, base)

    def lines_of(total: int, n_lines: int = 30) -> str:  # n_lines lines, `total` characters with the newlines
        chars = _plain(rng, total - (n_lines - 1))
        sizes = [len(chars) // n_lines + (i < len(chars) % n_lines) for i in range(n_lines)]
        cuts = np.cumsum([0, *sizes])
        return "\n".join(chars[a:b] for a, b in zip(cuts[:-1], cuts[1:]))
    add("line_length", False, lines_of(299))  # 299 / 30 = 9.97 < 10
    add("line_length", True, lines_of(300))   # 300 / 30 = 10.0

    def mixed(zh: int, total: int = 1000) -> str:
        letters = rng.choice(list(string.ascii_lowercase + string.digits), size=total - zh)
        return _plain(rng, zh) + "".join(letters)
    add("chinese_share", False, mixed(299))   # 29.9%
    add("chinese_share", True, mixed(300))    # 30.0%

    body = _plain(rng, 299)
    add("traditional", False, "這" + body)    # one traditional character
    add("traditional", True, "这" + body)

    def sensitive(k: int, n_lines: int = 20) -> str:
        lines = [_plain(rng, 15) for _ in range(n_lines)]
        for i, w in enumerate(SENSITIVE_WORDS[:k]):
            lines[i] += w
        return "\n".join(lines)
    add("sensitive", False, sensitive(11))    # 11 / 20 = 0.55 > 0.5
    add("sensitive", True, sensitive(10))     # 10 / 20 = 0.5

    general, _, _ = vocabulary()
    pool = sorted({c for w in general for c in w} - {c for w in SENSITIVE_WORDS for c in w})

    def repeated(b: int, r: int) -> str:  # B B R of distinct characters: ratio 2(b-12) / (2b + r - 13)
        chars = [pool[i] for i in rng.choice(len(pool), size=b + r, replace=False)]
        block = "".join(chars[:b])
        return block + block + "".join(chars[b:])
    add("repetition", False, repeated(100, 164))  # 176 / 351 > 0.5
    add("repetition", True, repeated(100, 165))   # 176 / 352 = 0.5
    return out


def web_corpus(n: int, seed: int = 0, probes: bool = True) -> list[dict]:
    """n generated documents (kinds drawn by KIND_PROBS) and, if `probes`, the 12 rule probes first."""
    rng = np.random.default_rng([seed, 1])
    docs = probe_documents(seed) if probes else []
    for k in rng.choice(len(KINDS), size=n, p=KIND_PROBS):
        docs.append(document(rng, KINDS[int(k)]))
    return docs


def labelled_lines(n: int, seed: int = 1000) -> dict[str, tuple[list[str], list[int]]]:
    """Labelled training sets: quality, lines (n prose = 1, n boilerplate = 0); toxicity, documents (n toxic = 1,
    n of the other kinds = 0, as the official model scores whole texts); a generator seeded apart from any corpus."""
    rng = np.random.default_rng([seed, 2])
    doms = list(DOMAIN_KEYWORDS)

    def some_domains():
        return [doms[int(rng.integers(len(doms)))]] if rng.random() < 0.8 else []
    high = [prose_line(rng, some_domains()) for _ in range(n)]
    low = [boilerplate_line(rng) for _ in range(n)]
    toxic = [document(rng, "toxic")["text"] for _ in range(n)]
    benign = [document(rng, KINDS[int(k)])["text"] for k in rng.choice(3, size=n, p=np.array(KIND_PROBS[:3]) / 0.85)]
    return {"quality": (high + low, [1] * n + [0] * n), "toxicity": (toxic + benign, [1] * n + [0] * n)}
