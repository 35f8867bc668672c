"""Train helpful-only, harmless-only and mixed reward models on HH-RLHF (paper §2.1–2.2, App. A.2).

    python experiments/train.py --model tiny-gpt2 --data-dir data/demo/hh-rlhf --max-length 256
    python experiments/train.py --model smollm2-135m-instruct-q4 --objective harmless \\
        --data-dir ../shared/data/hh-rlhf --train-split test --eval-fraction 0.2 --max-pairs 600
    python experiments/train.py --model gpt2-medium --seed 0 --seed 1 --seed 2        # the hub, paper setup
    accelerate launch experiments/train.py --model smollm2-360m                       # several GPUs

Writes <runs-dir>/<model>/<objective>/seed<k>/{rm/, train.json}. An interrupted run resumes from its
last checkpoint (<run>/checkpoint/) when started again with the same options.
"""
import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

import common


@click.command(context_settings={"show_default": True})
@click.option("--model", default="tiny-gpt2", help="Registry name, hub id or local dir (see README).")
@click.option("--objective", type=click.Choice(common.OBJECTIVES), multiple=True, default=common.OBJECTIVES,
              help="Objective(s) to train; repeatable.")
@click.option("--seed", type=int, multiple=True, default=(0,), help="Seed(s); repeatable.")
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", help="Where RMs are saved.")
@common.hh_data_options
@click.option("--max-eval-pairs", type=click.IntRange(min=1), default=500, help="Cap on held-out pairs.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default: 2 single-objective, 1 mixed.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, help="Peak learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, help="Pairs per optimizer step.")
@click.option("--micro-batch-tokens", type=click.IntRange(min=1), default=None,
              help="Gradient accumulation: split each batch into forwards of at most this many computed tokens "
                   "(shared prefix once, both answers, padding included; default: 2048 on CPU, 16384 on GPU) "
                   "so memory stays flat whatever the batch size.")
@click.option("--max-length", type=click.IntRange(min=8), default=512, help="Tokens per transcript (end kept).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Compute device.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              help="Autocast dtype; weights stay float32. auto = bf16 on GPUs that have it, float32 on CPU.")
@click.option("--save-every", type=click.IntRange(min=1), default=50, help="Checkpoint every N optimizer steps.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after N optimizer steps, keeping the checkpoint (run again to continue).")
@click.option("--force", is_flag=True, help="Retrain even if the RM is already trained.")
def main(**cfg):
    device = common.resolve_device(cfg["device"])
    dtype = common.resolve_dtype(cfg["dtype"], device)
    for objective in cfg["objective"]:
        for seed in cfg["seed"]:
            train_one(cfg, objective, seed, device, dtype)


class BradleyTerry(torch.nn.Module):
    """Rewards of chosen and rejected transcripts, computed inside forward() so DDP can sync the gradients.

    A chosen and a rejected transcript share their dialogue up to the final answer (a third of all tokens
    on HH-RLHF harmless-base), so that common token prefix runs once and both answers continue from its
    key/value cache. It is the same computation as two full forwards (same positions, same attention),
    only without the repeated prefix.
    """

    def __init__(self, rm, pad_id):
        super().__init__()
        self.rm = rm
        self.pad_id = pad_id

    def forward(self, chosen, rejected):
        device = self.rm.device
        prefix = [shared_prefix_length(c, r) for c, r in zip(chosen, rejected)]
        if min(prefix) == 0:  # nothing to share for some pair: plain forward of all transcripts
            input_ids, mask = common.pad_batch(chosen + rejected, self.pad_id)
            scores = common.rewards(self.rm, input_ids.to(device), mask.to(device))
            return scores[:len(chosen)], scores[len(chosen):]
        prefix_ids, prefix_mask = common.pad_batch([c[:k] for c, k in zip(chosen, prefix)], self.pad_id)
        cache = self.rm.base_model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
                                   use_cache=True).past_key_values
        cache.batch_repeat_interleave(2)  # rows: pair 0 chosen, pair 0 rejected, pair 1 chosen, ...
        answers = [seq[k:] for c, r, k in zip(chosen, rejected, prefix) for seq in (c, r)]
        answer_ids, answer_mask = common.pad_batch(answers, self.pad_id)
        # The prefix's padding stays masked in the middle; positions continue from each real prefix length.
        mask = torch.cat([prefix_mask.repeat_interleave(2, dim=0), answer_mask], dim=1).to(device)
        positions = torch.tensor(prefix).repeat_interleave(2)[:, None] + torch.arange(answer_ids.shape[1])
        hidden = self.rm.base_model(input_ids=answer_ids.to(device), attention_mask=mask,
                                    position_ids=positions.to(device), past_key_values=cache).last_hidden_state
        last = answer_mask.sum(dim=1).to(device) - 1
        scores = self.rm.score(hidden[torch.arange(hidden.shape[0], device=device), last]).squeeze(-1).float()
        return scores[0::2], scores[1::2]


def shared_prefix_length(a, b):
    """Tokens two sequences share at the start, leaving at least one token of each to read the reward at."""
    limit = min(len(a), len(b)) - 1
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def optimizer_batches(lengths, batch_size, epochs, seed):
    """Every optimizer step of the run: pair indices of similar length."""
    return [batch for epoch in range(epochs)
            for batch in common.length_grouped_batches(lengths, batch_size, seed=seed * 1000 + epoch)]


def pair_shapes(chosen_ids, rejected_ids):
    """Per pair, the shared prefix and the longer answer after it, in tokens."""
    prefix = [shared_prefix_length(c, r) for c, r in zip(chosen_ids, rejected_ids)]
    answer = [max(len(c), len(r)) - k for c, r, k in zip(chosen_ids, rejected_ids, prefix)]
    return prefix, answer


def forward_tokens(pairs, prefix, answer):
    """Padded tokens that one BradleyTerry forward of these pairs computes."""
    if min(prefix[i] for i in pairs) == 0:  # the fallback: full chosen and rejected transcripts
        return 2 * len(pairs) * max(prefix[i] + answer[i] for i in pairs)
    return len(pairs) * (max(prefix[i] for i in pairs) + 2 * max(answer[i] for i in pairs))


def micro_batches(pairs, prefix, answer, token_budget):
    """Cut pairs, in the given order, into forwards of at most `token_budget` computed tokens (at least one
    pair each). The order decides the padding, so callers sort first."""
    micros, current = [], []
    for i in pairs:
        if current and forward_tokens(current + [i], prefix, answer) > token_budget:
            micros.append(current)
            current = []
        current.append(i)
    return micros + [current] if current else micros


def train_one(cfg, objective, seed, device, dtype):
    out = common.rm_dir(cfg["runs_dir"], cfg["model"], objective, seed)
    if (out / "train.json").exists() and not cfg["force"]:
        click.echo(f"[{objective} seed {seed}] already trained: {out} (use --force to retrain)")
        return
    epochs = cfg["epochs"] or (1 if objective == "mixed" else 2)
    accelerator = Accelerator(mixed_precision="bf16" if dtype == torch.bfloat16 else "no", cpu=device.type == "cpu")
    token_budget = cfg["micro_batch_tokens"] or (16384 if accelerator.device.type == "cuda" else 2048)

    # load
    bad = common.BadRows()
    train_pairs, eval_pairs = common.load_hh(objective, cfg["data_dir"], cfg["train_split"], cfg["eval_split"],
                                             cfg["eval_fraction"], bad)
    click.echo(f"[{objective} seed {seed}] {bad.summary()}")
    train_pairs = common.subsample(train_pairs, cfg["max_pairs"], seed)
    eval_pairs = common.subsample(eval_pairs, cfg["max_eval_pairs"], 0)  # same held-out set for every seed
    if not train_pairs or not eval_pairs:
        raise click.ClickException(f"no usable {'training' if not train_pairs else 'held-out'} pairs for "
                                   f"'{objective}' ({bad.summary()})")
    model, tokenizer = common.new_reward_model(cfg["model"], seed)
    max_length = min(cfg["max_length"], common.context_length(model))  # GPT-2 has 1024 positions
    chosen_ids, rejected_ids = common.encode_pairs(tokenizer, train_pairs, max_length)
    prefix, answer = pair_shapes(chosen_ids, rejected_ids)
    steps = optimizer_batches([k + n for k, n in zip(prefix, answer)], cfg["batch_size"], epochs, seed)

    net = BradleyTerry(model, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], fused=True)  # 5x faster step than the default
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(steps))
    # The scheduler stays outside prepare(): accelerate's wrapper assumes a sharded dataloader and would step
    # it once per process, while `steps` already counts the optimizer steps of all processes together.
    net, optimizer = accelerator.prepare(net, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    checkpoint = out / "checkpoint"
    progress = {"step": 0, "loss_curve": [], "tokens": 0, "seconds": 0.0}
    if (checkpoint / "progress.json").exists():
        accelerator.load_state(str(checkpoint))
        progress = json.loads((checkpoint / "progress.json").read_text())
        click.echo(f"[{objective} seed {seed}] resuming from step {progress['step']} of {len(steps)}")
    resumed_from = progress["step"]

    # run
    net.train()
    bar = tqdm(total=len(steps), initial=progress["step"], desc=f"train {objective} seed{seed}", unit="step",
               disable=not accelerator.is_main_process)
    stop_at = len(steps) if cfg["max_steps"] is None else min(len(steps), cfg["max_steps"])
    started = time.perf_counter()
    for step in range(progress["step"], stop_at):
        step_loss = 0.0
        share = steps[step][accelerator.process_index::accelerator.num_processes]
        # On 600 real harmless-base pairs, cutting a batch sorted by total length computes 59 % more tokens
        # than the real ones, sorted by prefix length 35 %.
        micros = micro_batches(sorted(share, key=lambda i: -prefix[i]), prefix, answer, token_budget)
        for k, micro in enumerate(micros):
            # Gradients sync across processes once per step, on the last micro-batch; DDP then averages
            # the per-process means into the mean over the whole batch.
            sync = contextlib.nullcontext() if k == len(micros) - 1 else accelerator.no_sync(net)
            with sync, accelerator.autocast():
                chosen, rejected = net([chosen_ids[i] for i in micro], [rejected_ids[i] for i in micro])
                loss = -torch.nn.functional.logsigmoid(chosen - rejected).sum() / len(share)
                accelerator.backward(loss)
            step_loss += loss.item() * len(share) / len(steps[step])
            progress["tokens"] += sum(len(chosen_ids[i]) + len(rejected_ids[i]) for i in micro)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step_loss = ensure_finite(accelerator.reduce(torch.tensor(step_loss, device=accelerator.device),
                                                            "sum").item(), f"training loss at step {step + 1}")
        progress["loss_curve"].append(round(step_loss, 6))
        progress["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if progress["step"] % cfg["save_every"] == 0 or progress["step"] == stop_at:
            progress["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint(accelerator, checkpoint, progress)
    bar.close()
    if progress["step"] < len(steps):
        click.echo(f"[{objective} seed {seed}] stopped at step {progress['step']} of {len(steps)} (--max-steps); "
                   "run the same command again to continue")
        return

    # evaluate and save
    if accelerator.is_main_process:
        rm = accelerator.unwrap_model(net).rm
        with accelerator.autocast():
            accuracy = held_out_accuracy(BradleyTerry(rm, tokenizer.pad_token_id).eval(),
                                         *common.encode_pairs(tokenizer, eval_pairs, max_length), token_budget)
        metrics = {
            "eval_accuracy": accuracy, "eval_pairs": len(eval_pairs), "train_pairs": len(train_pairs),
            "epochs": epochs, "steps": len(steps), "resumed_from_step": resumed_from,
            "final_loss": sum(progress["loss_curve"][-10:]) / len(progress["loss_curve"][-10:]),
            "loss_curve": progress["loss_curve"], "train_seconds": round(progress["seconds"], 2),
            "train_tokens_per_second": round(progress["tokens"] * accelerator.num_processes
                                             / max(progress["seconds"], 1e-9), 1),
            "bad_rows": {"count": bad.total, "by_reason": bad.counts, "first": bad.examples},
        }
        save_rm(rm, tokenizer, out / "rm")
        common.write_json(out / "train.json", {**common.run_record({**cfg, "objective": objective, "seed": seed,
                                                                    "dtype": str(dtype), "device": str(device)}),
                                               "metrics": metrics})
        shutil.rmtree(checkpoint, ignore_errors=True)
        click.echo(f"[{objective} seed {seed}] eval_accuracy {accuracy:.4f} on {len(eval_pairs)} held-out pairs "
                   f"→ {out}")
    accelerator.wait_for_everyone()


@torch.no_grad()
def held_out_accuracy(net, chosen_ids, rejected_ids, token_budget) -> float:
    """Share of pairs whose chosen reward is strictly above the rejected one (ties are wrong, as in the paper)."""
    prefix, answer = pair_shapes(chosen_ids, rejected_ids)
    # Over hundreds of pairs, buckets of similar prefix sorted by answer pad least (on 456 held-out
    # harmless-base pairs: 32 % above the real tokens, against 62 % sorting by prefix alone).
    order = sorted(range(len(chosen_ids)), key=lambda i: (-(prefix[i] // 64), -answer[i]))
    correct = 0
    for micro in tqdm(micro_batches(order, prefix, answer, token_budget), desc="eval", unit="batch"):
        chosen, rejected = net([chosen_ids[i] for i in micro], [rejected_ids[i] for i in micro])
        correct += int((chosen > rejected).sum())
    return correct / len(chosen_ids)


def ensure_finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise click.ClickException(f"{what} is {value}: stopping instead of saving a broken model "
                                   "(try a lower --lr, or --dtype float32)")
    return value


def save_checkpoint(accelerator, checkpoint: Path, progress: dict):
    """Replace the checkpoint only once the new one is complete."""
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        common.write_json(tmp / "progress.json", progress)
        shutil.rmtree(checkpoint, ignore_errors=True)
        tmp.rename(checkpoint)
    accelerator.wait_for_everyone()


def save_rm(rm, tokenizer, target: Path):
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rm.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


if __name__ == "__main__":
    main()
