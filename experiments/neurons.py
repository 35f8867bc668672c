"""Per-neuron importance of each reward model: magnitude, change and random scores (paper §2.3, §4.1,
Fig. 4, Table 16).

    python experiments/neurons.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/neurons.py --model smollm2-135m-instruct-q4 --objective harmless \\
        --data-dir ../shared/data/hh-rlhf --train-split test --eval-fraction 0.2 --max-pairs 600
    python experiments/neurons.py --model gpt2-medium --seed 0 --seed 1 --seed 2 --max-pairs 2000 --site down_in

Scoring data: the training pairs of the RM's own objective (the same split, held-out rule and seeded
subsample as train.py). Each batch holds the chosen AND the rejected transcript of the same pairs, run in one
forward pass with a hook on every layer that adds the activations to float64 running sums (rmt_kernels).

Writes <runs-dir>/<model>/<objective>/seed<k>/neurons/<method>.h5:
  score [layers, d_mlp] float32 — magnitude: (I_chosen + I_rejected) / 2 with I = sum / tokens, the mean
      activation over real tokens; change: sqrt(sq_sum / tokens) over the chosen and rejected tokens together,
      the RMS of (a_trained − a_base); random: uniform [0, 1) from a torch.Generator seeded with the seed and
      the objective (random_generator); attribution (ours, opt-in with --method attribution; one backward per
      batch): |mean over pairs of −Σ_tokens a · ∂m/∂a|, the first-order estimate of how much zero-ablating the
      neuron changes the margin m = r(chosen) − r(rejected), its sign kept in the dataset `signed`.
  chosen/, rejected/ — sum, abs_sum, sq_sum, pos_count [layers, d_mlp] float64 and tokens (scalar) of the RM's
      activations, in every file (mean-ablation reads the per-neuron mean from them).
  sq_diff/chosen/, sq_diff/rejected/ (change only) — sq_sum = Σ (a_trained − a_base)² and tokens.
  pair_rmsd [pairs] float64 — per pair, RMSD over all neurons between the token-mean activation vectors of
      chosen and rejected.
  attributes: method, site, model, objective, seed, backend, pairs, layers, d_mlp, settings (JSON: everything
      that shapes the numbers; a file is reused only when they equal the request, else rescored), config (JSON).
--site down_in writes to neurons/down_in/ instead, so both sites can exist side by side.
and under <results-dir>/<model>/neurons/ (neurons/down_in/ for that site): layers.csv/.md and fig4_layers.png (share of the top-τ % neurons in
the early / middle / late third of the layers; layer l is in third floor(3·l / layers)), rmsd.csv/.md
(Table 16), report_section.md and run.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import h5py
import torch

import common
import rmt_kernels as rk

THIRDS = ("early", "middle", "late")


@click.command(context_settings={"show_default": True})
@common.rm_options
@common.results_option
@common.hh_data_options
@common.method_option()
@common.neuron_options
@common.tau_option(multiple=False)
@common.compute_options
@click.option("--force", is_flag=True, help="Rescore even if up-to-date .h5 files exist.")
def main(**cfg):
    device, dtype = common.start_analysis(cfg)
    runs = common.require_runs(cfg["runs_dir"], cfg["model"], cfg["objective"], cfg["seed"])  # before any scoring
    out = common.step_dir(cfg["results_dir"], cfg["model"], "neurons")
    out = out if cfg["site"] == "act" else out / cfg["site"]

    # score (what is missing or stale), then tables from what the files record
    scored = [common.compute_neuron_files(cfg, objective, seed, cfg["method"], device, dtype) for objective, seed in runs]
    write_results(cfg, runs, out)
    common.write_json(out / "run.json", {**common.run_record({**cfg, "dtype": str(dtype), "device": str(device),
                                                              "backend": rk.backend(device)}), "rms": scored})
    report = common.write_report(cfg["results_dir"], cfg["model"])
    click.echo(f"tables and figure → {out}; report: {report}")


# ---------------------------------------------------------------------------------------------
# Tables and figure over all requested RMs, described from what the .h5 files record.
# ---------------------------------------------------------------------------------------------
def layer_shares(score, tau):
    """(share of the top-τ % neurons in the early / middle / late third of the layers, the threshold score)."""
    selected = common.select_top(score, tau)
    layer_of = selected.nonzero()[:, 0]
    thirds = torch.bincount(layer_of * 3 // score.shape[0], minlength=3)
    return (thirds.double() / len(layer_of)).tolist(), float(score[selected].min())


def write_results(cfg, runs, out):
    """layers.csv/.md + fig4_layers.png (Fig. 4), rmsd.csv/.md (Table 16) and report_section.md."""
    layer_rows, rmsd_rows, recorded = [], [], {}
    for objective in cfg["objective"]:
        folders = {seed: common.neuron_dir(runs[objective, seed], cfg["site"]) for seed in cfg["seed"]}
        for method in cfg["method"]:
            shares, thresholds = [], []
            for seed, folder in folders.items():
                with h5py.File(folder / f"{method}.h5", "r") as f:
                    share, threshold = layer_shares(torch.from_numpy(f["score"][()]), cfg["tau"])
                    recorded[objective, seed] = {"site": f.attrs["site"], "pairs": int(f.attrs["pairs"])}
                shares.append(share)
                thresholds.append(threshold)
            row = {"objective": objective, "method": method, "tau": cfg["tau"], "seeds": len(shares)}
            for third, values in zip(THIRDS, zip(*shares)):
                row[third], row[f"{third}_std"], _ = common.mean_std(values)
            row["threshold"] = common.mean_std(thresholds)[0]
            layer_rows.append(row)
        if "magnitude" in cfg["method"]:
            per_seed, pairs = [], 0
            for folder in folders.values():
                with h5py.File(folder / "magnitude.h5", "r") as f:
                    per_seed.append(float(f["pair_rmsd"][()].mean()))
                    pairs += len(f["pair_rmsd"])
            mean, std, _ = common.mean_std(per_seed)
            rmsd_rows.append({"objective": objective, "rmsd": mean, "rmsd_std": std, "seeds": len(per_seed),
                              "pairs": pairs})
    common.write_rows(out / "layers", layer_rows)
    common.write_rows(out / "rmsd", rmsd_rows)
    plot_layers(layer_rows, cfg, out / "fig4_layers.png")
    common.write_text(out / "report_section.md", report_section(cfg, layer_rows, rmsd_rows, recorded))


def plot_layers(rows, cfg, path):
    plt = common.pyplot()
    methods = list(cfg["method"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.4), sharey=True, squeeze=False)
    width = 0.8 / len(cfg["objective"])
    for ax, method in zip(axes[0], methods):
        for k, objective in enumerate(cfg["objective"]):
            row = next(r for r in rows if r["objective"] == objective and r["method"] == method)
            ax.bar([i + (k - (len(cfg["objective"]) - 1) / 2) * width for i in range(3)], [row[t] for t in THIRDS],
                   width, yerr=[row[f"{t}_std"] for t in THIRDS], label=objective, capsize=2,
                   color=common.RM_COLORS[objective])
        ax.set_xticks(range(3), [f"{t} third" for t in THIRDS])
        ax.set_xlabel("layers")
        ax.set_title(f"{method} (top {cfg['tau']:g} %)")
    axes[0][0].set_ylabel("share of selected neurons")
    axes[0][-1].legend(title="RM", fontsize=8)
    fig.suptitle(f"{cfg['model']}: where the top-τ neurons are (site {cfg['site']}; ± std over seeds)")
    common.save_figure(fig, path)


def report_section(cfg, layer_rows, rmsd_rows, recorded):
    """Paths are relative to results/<model>/, where report.md gathers the sections. Site and pair counts come
    from the .h5 files, not from the command line."""
    sites = sorted({r["site"] for r in recorded.values()})
    pairs = ", ".join(f"{o} seed {s}: {r['pairs']}" for (o, s), r in recorded.items())
    figure = "neurons/fig4_layers.png" if cfg["site"] == "act" else f"neurons/{cfg['site']}/fig4_layers.png"
    text = [
        "## Neurons: where the objectives live (§4.1, Fig. 4, Table 16)\n",
        f"Neuron site `{', '.join(sites)}`; scored over each RM's own training pairs ({pairs}); top "
        f"{cfg['tau']:g} % of all MLP neurons selected globally (exact count; `threshold` is the lowest selected "
        "score). Shares are means over seeds (± population std over seeds in the CSV).\n",
        "### Layer distribution of the selected neurons (Fig. 4)\n",
        common.rows_markdown([{k: v for k, v in row.items() if not k.endswith("_std")} for row in layer_rows]),
        f"![Fig. 4: layer distribution]({figure})\n",
        "Third of the layers holding the most selected neurons — " + "; ".join(
            f"{method}: " + ", ".join(f"{row['objective']} {top} ({row[top]:.2f})" for row in layer_rows
                                     if row["method"] == method for top in [max(THIRDS, key=row.get)])
            for method in cfg["method"]) + ". The paper finds the late layers for all three RM types (magnitude); "
        "random selection follows the number of layers per third.\n",
    ]
    if rmsd_rows:
        text += ["### Chosen vs rejected: RMSD of token-mean activations (Table 16)\n", common.rows_markdown(rmsd_rows),
                 "The paper reports ~1e-3: chosen and rejected transcripts engage nearly the same neurons.\n"]
    return "\n".join(text)


if __name__ == "__main__":
    main()
