"""How a text is patched, in the terminal (ANSI colours) or as a PNG plot; `bytelm patch` shows it."""

from __future__ import annotations

from pathlib import Path

import torch

from bytelm.vocab import BOS, EOS

_BG = ("\x1b[48;5;24m", "\x1b[48;5;94m")  # two muted backgrounds, readable on dark and light
_RESET = "\x1b[0m"


def _show(b: int) -> str:
    """A byte as one visible cell: printable ASCII as is, the rest as escapes."""
    if b == BOS:
        return "⟨bos⟩"
    if b == EOS:
        return "⟨eos⟩"
    if b == ord("\n"):
        return "⏎\n"
    if b == ord("\t"):
        return "⇥"
    if 32 <= b < 127:
        return chr(b)
    return f"\\x{b:02x}"


def _text_of(chunk: list[int]) -> str:
    """A patch's bytes as text: valid UTF-8 runs decode, anything else is escaped."""
    raw = bytes(b for b in chunk if b < 256)
    try:
        s = raw.decode("utf-8")
        return "".join(_show(ord(c)) if ord(c) < 128 else c for c in s) if s else ""
    except UnicodeDecodeError:
        return "".join(_show(b) for b in chunk)


def _cells(chunk: list[int]) -> str:
    """A patch as text: runs of raw bytes decode as UTF-8 where valid, specials as tags."""
    out, run = [], []
    for b in [*chunk, -1]:
        if 0 <= b < 256:
            run.append(b)
            continue
        if run:
            out.append(_text_of(run))
            run = []
        if b >= 256:
            out.append(_show(b))
    return "".join(out)


def render(ids: list[int], lengths: list[int], color: bool = True) -> str:
    """Patches in alternating background colours (or separated by '|' without colour)."""
    out, i = [], 0
    for k, n in enumerate(lengths):
        text = _cells(ids[i : i + n])
        i += n
        if color:
            # colour each line on its own, so a newline inside a patch does not paint the margin
            out.append("\n".join(_BG[k % 2] + ln + _RESET if ln else "" for ln in text.split("\n")))
        else:
            out.append(text + "|")
    return "".join(out)


def entropy_table(ids: list[int], lengths: list[int], H: list[float]) -> str:
    """One line per patch: its bytes and the entropy (bits) after each byte."""
    lines, i = ["patch  bytes                     H after each byte (bits)"], 0
    for k, n in enumerate(lengths):
        cells = " ".join(f"{h:4.1f}" for h in H[i : i + n])
        text = "".join(_show(b).replace("\n", "") for b in ids[i : i + n])
        lines.append(f"{k:5d}  {text[:24]:<24}  {cells}")
        i += n
    return "\n".join(lines)


def plot_entropies(ids, H, ends, threshold, mode: str, path: str | Path, title: str = "") -> None:
    """Entropy per byte with the threshold line and the patch starts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(ids)
    fig, ax = plt.subplots(figsize=(max(8, min(0.12 * T, 40)), 3.8))
    x = torch.arange(T)
    ax.plot(x, H, "-o", ms=2.5, lw=1, color="tab:blue", label="H(next byte | bytes ≤ t), bits")
    if mode == "monotonic":
        dH = [0.0] + [H[t] - H[t - 1] for t in range(1, T)]
        ax.plot(x, dH, lw=0.8, color="tab:green", alpha=0.7, label="H_t − H_{t−1}")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"θ = {threshold:.3f} ({mode})")
    starts = [0] + [t + 1 for t in range(T - 1) if ends[t]]
    for s in starts:
        ax.axvline(s - 0.5, color="gray", lw=0.6, alpha=0.6)
    if T <= 200:
        labels = ["·" if b == 32 else _show(b).strip() for b in ids]
        ax.set_xticks(range(T), labels, fontsize=7)
    ax.set_xlim(-1, T)
    ax.set_ylabel("bits")
    ax.set_title(title or f"{len(starts)} patches over {T} bytes (gray lines: patch starts)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
