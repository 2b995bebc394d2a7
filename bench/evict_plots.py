"""
evict_plots.py - the figures of bench/eviction_bench.py from its JSON result:
  <stem>_mqar.png         MQAR accuracy against the cache budget, one panel per context, one
                          line per strategy (full and linear, which have no budget, as
                          horizontal lines), and the memory each keeps per layer
  <stem>_lm_budget.png    perplexity against the cache budget, one line per strategy
  <stem>_lm_position.png  perplexity over full attention's against the position in the context
                          (the same validation windows, so the text's own difficulty cancels),
                          one panel per budget
"""
import math

COLORS = {"full": "black", "streaming": "tab:orange", "h2o": "tab:green", "linear": "tab:purple",
          "hybrid": "tab:blue"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _budget_axis(ax, budgets):
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("cache budget (exact K/V entries)")
    ax.grid(True, alpha=0.3)


def plot_mqar(res, meta, path):
    plt = _plt()
    recs = res["records"]
    contexts = res["config"]["contexts"]
    budgets = meta["budgets"]
    n = len(contexts) + 1
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    axes = [a for r in axes for a in r]

    def pick(kind, L):
        return sorted((r["metadata"]["cache_size"] or 0, 100 * r["results"]["accuracy"])
                      for r in recs if r["metadata"]["strategy"] == kind and
                      r["metadata"]["context"] == L)
    for ax, L in zip(axes, contexts):
        for kind in ("streaming", "h2o", "hybrid"):
            pts = pick(kind, L)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[kind],
                    label=kind)
        for kind, ls in (("full", "--"), ("linear", ":")):
            pts = pick(kind, L)
            if pts:
                ax.axhline(pts[0][1], color=COLORS[kind], ls=ls,
                           label="%s (no budget) %.1f%%" % (kind, pts[0][1]))
        ax.set_title("context %d" % L, fontsize=10)
        ax.set_ylabel("accuracy at the queries (%)")
        ax.set_ylim(-2, 102)
        _budget_axis(ax, budgets)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[len(contexts)]
    L = max(contexts)
    for kind in ("full", "streaming", "h2o", "linear", "hybrid"):
        pts = sorted((r["metadata"]["cache_size"] or 0, r["results"]["memory_per_layer"]
                      ["total_bytes"] / 1024) for r in recs
                     if r["metadata"]["strategy"] == kind and r["metadata"]["context"] == L)
        if kind in ("full", "linear"):
            ax.axhline(pts[0][1], color=COLORS[kind], ls="--" if kind == "full" else ":",
                       label="%s %.1f KiB" % (kind, pts[0][1]))
        else:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[kind],
                    label=kind)
    ax.set_yscale("log")
    ax.set_ylabel("KiB per sequence per layer")
    ax.set_title("decode memory at context %d (K/V %s, state fp32)" % (L, meta["kv_dtype"]),
                 fontsize=10)
    _budget_axis(ax, budgets)
    ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.axis("off")
    c = res["config"]
    fig.suptitle("MQAR (Zoology): %d pairs, vocabulary %d, d %d, %d heads, 2 layers; trained "
                 "%d..%d tokens; streaming / h2o: eviction on the full model; %s; %s"
                 % (c["num_pairs"], c["vocab"], c["d_model"], c["heads"], c["start_len"],
                    c["train_len"], meta["device"], meta["commit"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _lm_name(m):
    """The line a language-model record belongs to."""
    gate = "" if m["strategy"] != "hybrid" else \
        ", exp gate" if m.get("gate") == "exp(g)" else ", sigmoid gate"
    return {"original": "hybrid%s (no training)" % gate if m["strategy"] == "hybrid" else
            "linear (no training)" if m["strategy"] == "linear" else m["strategy"],
            "control": "full, fine-tuned (control)",
            "transferred": "hybrid%s, attention transfer only" % gate,
            "converted": "hybrid%s, converted" % gate}[m["model"]]


def _lm_lines(recs):
    """{line name: {budget (0 = none): record}}."""
    lines = {}
    for r in recs:
        lines.setdefault(_lm_name(r["metadata"]), {})[r["metadata"]["cache_size"] or 0] = r
    return lines


def _style(name):
    """(color, line style): the exp-gate variant solid, the normative sigmoid gate dash-dot."""
    ls = "-." if "sigmoid gate" in name else "-"
    for key, color in (("converted", "tab:red"), ("transfer", "tab:cyan"),
                       ("no training", "tab:blue"), ("control", "gray"),
                       ("streaming", COLORS["streaming"]), ("h2o", COLORS["h2o"]),
                       ("linear", COLORS["linear"]), ("full", "black")):
        if key in name:
            return color, ls
    return COLORS["hybrid"], ls


def plot_lm_budget(res, meta, path):
    """Two panels of the same lines: every line, and a close-up around full attention
    (0.98x to 1.10x its perplexity), where the strategies that work differ."""
    plt = _plt()
    lines = _lm_lines(res["records"])
    budgets = meta["budgets"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.2))
    full = lines["full"][0]["results"]["perplexity"]
    top = max(r["results"]["perplexity"] for pts in lines.values() for r in pts.values()
              if math.isfinite(r["results"]["perplexity"]))
    top = min(top * 1.05, full * 3)
    for ax, (lo, hi) in zip(axes, ((full * 0.95, top), (full * 0.98, full * 1.10))):
        for name, pts in lines.items():
            color, ls = _style(name)
            if 0 in pts:
                ppl = pts[0]["results"]["perplexity"]
                if not lo < ppl < hi:
                    ax.plot([], [], ":", color=color, label="%s: %.4g (off the axis)"
                            % (name, ppl))
                else:
                    ax.axhline(ppl, color=color, ls="--" if name.startswith("full") else ":",
                               label="%s %.3f" % (name, ppl))
            else:
                bs = sorted(pts)
                ax.plot(bs, [pts[b]["results"]["perplexity"] for b in bs], marker="o", ls=ls,
                        color=color, label=name)
        ax.set_ylim(lo, hi)
        ax.set_ylabel("perplexity (validation, whole context)")
        _budget_axis(ax, budgets)
    axes[0].set_title("every strategy", fontsize=9)
    axes[1].set_title("close-up: 0.98x to 1.10x full attention's perplexity", fontsize=9)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    c = res["config"]
    fig.suptitle("Language model (%s, characters): d %d, %d layers, %d heads, context %d; "
                 "dash-dot: the normative sigmoid gate, solid: the exp(g) variant; %s"
                 % (res["corpus"]["path"].split("/")[-1], c["d_model"], c["layers"],
                    c["heads"], c["ctx"], meta["device"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lm_position(res, meta, path):
    plt = _plt()
    lines = _lm_lines(res["records"])
    budgets = meta["budgets"]
    cols = min(3, len(budgets))
    rows = -(-len(budgets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    axes = [a for r in axes for a in r]
    full = lines["full"][0]["results"]
    for ax, b in zip(axes, budgets):
        for name, pts in lines.items():
            r = pts.get(b) or (pts.get(0) if name.startswith("full, fine") else None)
            if r is None or "no training" in name or "transfer" in name:
                continue
            w = r["results"]["bin_width"]
            ys = [math.exp(x - f) for x, f in zip(r["results"]["nll_by_position"],
                                                  full["nll_by_position"])]
            xs = [w * (i + 0.5) for i in range(len(ys))]
            color, ls = _style(name)
            above = sum(ys) / len(ys) > 1.25
            ax.plot(xs, ys, color=color, lw=1.2, ls="--" if name.startswith("full") else ls,
                    label=name + (" (off the top: mean %.2f)" % (sum(ys) / len(ys))
                                  if above else ""))
        ax.axhline(1.0, color="black", lw=0.8, ls="--", label="full attention")
        ax.axvline(b, color="gray", lw=0.6, ls=":")
        ax.set_title("budget %d" % b, fontsize=10)
        ax.set_xlabel("position in the context")
        ax.set_ylabel("perplexity / full attention's (bins of %d)" % full["bin_width"])
        ax.set_ylim(0.92, 1.25)  # a line above it is named in the legend with its mean
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(budgets):]:
        ax.axis("off")
    fig.suptitle("Perplexity over full attention's at each position, same validation windows "
                 "(dotted: the budget; past it the strategies evict); untrained hybrid and "
                 "linear in the budget plot; %s" % meta["device"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_all(out, stem):
    """Writes the figures of a result (what it has of them); returns their paths."""
    files = []
    meta = out["metadata"]
    if "mqar" in out:
        plot_mqar(out["mqar"], meta, stem + "_mqar.png")
        files.append(stem + "_mqar.png")
    if "lm" in out:
        plot_lm_budget(out["lm"], meta, stem + "_lm_budget.png")
        plot_lm_position(out["lm"], meta, stem + "_lm_position.png")
        files += [stem + "_lm_budget.png", stem + "_lm_position.png"]
    return files
