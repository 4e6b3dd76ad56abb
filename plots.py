"""The run's pictures: accuracy against parallelism (the frontier) and the RL reward curves.

    python curriculum.py --stages 4,8 --quick --out runs/q   # writes runs/q/frontier.png, rewards.png
    python eval_math.py --ckpt runs/q/tstar8.pt --block-size 4,8 --sweep   # one checkpoint's frontier

The paper's question is whether T* buys more tokens per forward (TPF) at the same
accuracy. One threshold per checkpoint cannot answer that: a lower θ commits more per
forward and usually loses accuracy, so two checkpoints are compared fairly only along
their whole accuracy-vs-TPF curve. The curriculum therefore decodes every checkpoint at
several θ (plus static and ltr, one token per step: the TPF ≈ 1 floor) and draws the
curves here; `frontier_table` says the same in numbers for results.md.

matplotlib is optional (requirements-plots.txt): each picture function returns the path
it wrote, or None when matplotlib is missing, and the caller prints one line for the
skip. This module imports nothing first-party, so any script can draw without the rest.
"""

# marker per commit rule, so one colour (one checkpoint) can carry all its decodes
MARKERS = {"dynamic": "o", "static": "s", "ltr": "^"}


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display on a server or in CI: we only write files
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _points(rows, name, block):
    """(tpf, accuracy %, rule, θ) of one checkpoint at one decode block, sorted by TPF, so
    the line drawn through them reads left (careful) to right (bold)."""
    # greedy decodes only: a sampled mean@N row is another metric, not a point of this curve
    return sorted((r["tpf"], 100 * r["accuracy"], r["rule"], r.get("threshold"))
                  for r in rows if r["method"] == name and r["decode_block"] == block and r["rule"] != "sampled")


def frontier(rows, names, blocks, path, title=""):
    """Accuracy against TPF: one panel per decode block size, one line per checkpoint
    through all its decodes, marker = rule. `rows` are evaluation rows (method,
    decode_block, rule, threshold, accuracy, tpf). Returns `path`, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    # at least 6 inches wide, so one panel (eval_math --sweep at one B) still fits the caption
    fig, axes = plt.subplots(1, len(blocks), figsize=(max(6.0, 4.2 * len(blocks)), 3.9), sharey=True,
                             squeeze=False)
    colour = plt.get_cmap("tab10")
    for ax, B in zip(axes[0], blocks):
        for i, n in enumerate(names):
            pts = _points(rows, n, B)
            if not pts:
                continue
            c = colour(i % 10)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c, lw=1.2, label=n)
            for rule, marker in MARKERS.items():
                sel = [p for p in pts if p[2] == rule]
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], color=c, marker=marker, s=16, zorder=3)
        ax.set_title(f"decoded at B={B}", fontsize=10)
        ax.set_xlabel("tokens per forward")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy %")
    axes[0][-1].legend(fontsize=7)
    thetas = sorted({r["threshold"] for r in rows if r["rule"] == "dynamic"})
    fig.suptitle((title + "\n" if title else "") + "● dynamic θ ∈ {" + ", ".join(f"{t:g}" for t in thetas)
                 + "}   ■ static   ▲ ltr (one token per step)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rewards(curves, path, title=""):
    """Rollout reward (mean over the step's samples) per RL step. `curves` is a list of
    (label, rewards, first_step): T*'s stages follow one another on the step axis
    (first_step = the steps before them, a dotted line marks each stage start), while
    direct starts at 0, so the two methods are compared over the same RL budget.
    Returns `path`, or None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, rs, start in curves:
        line, = ax.plot(range(start + 1, start + len(rs) + 1), rs, lw=1.3, marker=".", ms=3, label=label)
        if start:
            ax.axvline(start + 0.5, color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("RL step")
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole: no 2.5 ticks
    ax.set_ylabel("rollout reward")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_table(rows, names, blocks, tpf_floors=(2.0, 3.0)):
    """The frontier in numbers: for every checkpoint and decode block, the best accuracy
    among its decodes that reach TPF >= each floor ('-' if none does), with that decode's
    TPF and θ. Markdown lines for results.md."""
    head = " | ".join(f"B={B} TPF≥{f:g}" for B in blocks for f in tpf_floors)
    lines = [f"| checkpoint | {head} |", "|---|" + "---|" * (len(blocks) * len(tpf_floors))]
    for n in names:
        cells = []
        for B in blocks:
            for f in tpf_floors:
                ok = [p for p in _points(rows, n, B) if p[0] >= f]
                if not ok:
                    cells.append("-")
                    continue
                tpf, acc, rule, theta = max(ok, key=lambda p: (p[1], p[0]))  # ties: the faster
                cells.append(f"{acc:.1f} / {tpf:.2f} (" + (f"θ {theta:g}" if rule == "dynamic" else rule) + ")")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines
