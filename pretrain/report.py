"""The pretraining report: loss curve, sub-model validation table, expert-load balance and routing-diagnostics
heatmaps, as `report/pretrain.md` + PNGs and as one self-contained `report/report.html`."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.balance import LayerBalance  # noqa: E402
from pretrain.evaluate import RoutingDiagnostics  # noqa: E402
from rl_platform.report_html import write_report_html  # noqa: E402


def write_pretrain_html(report_dir: Path, run_name: str, resolved_config: dict) -> Path:
    """report.html from pretrain.md, with every figure it links inlined and the resolved config."""
    return write_report_html(report_dir / "pretrain.md", report_dir / "report.html",
                             title=f"Pretraining report: {run_name}", config=resolved_config)


def plot_loss(history: list[dict[str, float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["train/loss"] for m in history], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train CE")
    ax.set_title("pretraining loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_diagnostics(diag: RoutingDiagnostics, out_dir: Path) -> list[Path]:
    paths = []
    num_layers = diag.frequency_LDE.shape[0]
    fig, axes = plt.subplots(num_layers, 1, figsize=(8, 1.2 + 1.1 * num_layers), squeeze=False)
    for layer in range(num_layers):
        ax = axes[layer, 0]
        ax.imshow(diag.frequency_LDE[layer].numpy(), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(diag.domains)), diag.domains, fontsize=7)
        ax.set_title(f"layer {layer}: expert activation frequency per domain", fontsize=8)
    axes[-1, 0].set_xlabel("expert")
    fig.tight_layout()
    paths.append(out_dir / "expert_frequency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    picks = sorted({0, num_layers // 2, num_layers - 1})
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3), squeeze=False)
    for ax, layer in zip(axes[0], picks, strict=True):
        ax.imshow(diag.iou_LDD[layer].numpy(), vmin=0, vmax=1, cmap="magma")
        ax.set_xticks(range(len(diag.domains)), diag.domains, rotation=45, fontsize=7)
        ax.set_yticks(range(len(diag.domains)), diag.domains, fontsize=7)
        ax.set_title(f"top-25% IoU, layer {layer}", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "expert_iou.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    for d, name in enumerate(diag.domains):
        ax.plot(diag.entropy_LD[:, d].numpy(), marker="o", label=name)
    ax.plot(diag.entropy_L.numpy(), marker="s", color="black", label="all")
    ax.set_xlabel("layer")
    ax.set_ylabel("normalised routing entropy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "routing_entropy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def diagnostics_markdown(diag: RoutingDiagnostics) -> str:
    lines = ["| layer | NE all | " + " | ".join(f"NE {d}" for d in diag.domains) + " | "
             + " | ".join(f"IoU {a}/{b}" for i, a in enumerate(diag.domains) for b in diag.domains[i + 1:]) + " |"]
    pairs = [(i, j) for i in range(len(diag.domains)) for j in range(i + 1, len(diag.domains))]
    lines.append("|" + "---|" * (2 + len(diag.domains) + len(pairs)))
    for layer in range(diag.entropy_L.shape[0]):
        cells = [f"{layer}", f"{diag.entropy_L[layer]:.3f}"]
        cells += [f"{diag.entropy_LD[layer, d]:.3f}" for d in range(len(diag.domains))]
        cells += [f"{diag.iou_LDD[layer, i, j]:.2f}" for i, j in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_markdown(losses: dict[str, dict[str, float]], describe: dict[str, str]) -> str:
    domains = sorted({d for v in losses.values() for d in v if d != "all"})
    lines = ["| sub-model | shape | val loss | " + " | ".join(domains) + " |",
             "|---|---|---|" + "---|" * len(domains)]
    for name, values in losses.items():
        lines.append(f"| {name} | {describe[name]} | {values['all']:.4f} | "
                     + " | ".join(f"{values.get(d, float('nan')):.4f}" for d in domains) + " |")
    return "\n".join(lines)


def plot_balance(history: list[dict[str, float]], path: Path) -> None:
    """Training-time balance: busiest expert over an even share, and dead experts per layer, per step."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["moe/expert_load_max"] for m in history], lw=1, label="max/mean load")
    ax.plot([m["moe/dead_experts"] for m in history], lw=1, label="dead experts per layer")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("step")
    ax.set_title("expert load during training (per step, layer mean)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def balance_markdown(balance: LayerBalance) -> str:
    """Per-layer balance on held-out batches (pretrain.balance.layer_balance)."""
    lines = ["| layer | dead experts | max/mean load | min/mean load | load CV | NE |", "|---|---|---|---|---|---|"]
    for layer in range(len(balance.dead_L)):
        lines.append(f"| {layer} | {balance.dead_L[layer]} | {balance.max_over_mean_L[layer]:.2f} | "
                     f"{balance.min_over_mean_L[layer]:.2f} | {balance.cv_L[layer]:.2f} | "
                     f"{balance.entropy_L[layer]:.3f} |")
    total = balance.summary()
    lines.append(f"| all | {total['dead_experts']:.0f} | {total['max_over_mean']:.2f} | {total['min_over_mean']:.2f} "
                 f"| {total['load_cv']:.2f} | {total['entropy']:.3f} |")
    return "\n".join(lines)


def elastic_table_markdown(elastic: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]],
                           describe: dict[str, str]) -> str:
    """ERNIE 5.0 Tables 9-11 side by side: each named sub-model's val loss after elastic training and after
    training the full model only (the paper reports the baseline at full size only), and their gap."""
    lines = ["| inference sub-model | shape | non-elastic | elastic | elastic vs non-elastic |",
             "|---|---|---|---|---|"]
    for name, values in elastic.items():
        base = baseline.get(name, {}).get("all", float("nan"))
        lines.append(f"| {name} | {describe.get(name, '')} | {base:.4f} | {values['all']:.4f} | "
                     f"{(values['all'] - base) / base:+.1%} |")
    return "\n".join(lines)
