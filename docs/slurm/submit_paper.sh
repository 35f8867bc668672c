#!/usr/bin/env bash
# The paper preset — six backbones × 3 objectives × 3 seeds (54 RMs), the 25 tasks — on a SLURM cluster, from a
# checkout on a disk every node sees (runs/ and results/ are shared by all jobs):
#
#   bash docs/slurm/submit_paper.sh                              # 6 jobs per step, one GPU each
#   JOBS=12 SBATCH_ARGS="--partition=gpu --time=12:00:00" bash docs/slurm/submit_paper.sh
#   JOBS=4 GPUS=4 bash docs/slurm/submit_paper.sh               # 4 nodes of 4 GPUs: torchrun inside each job
#
# Each step is one job array of JOBS jobs, SHARD=K/JOBS: every job takes the units of the step (one RM's training,
# scores, neuron files, an ablation configuration, a conflict file) that no other live job holds, so unequal units
# still spread over the jobs, and writes no table. Each array starts when the previous one has ended (afterany: a
# failed job only leaves its units to the next runs). A last job without SHARD then runs the whole preset: it reuses
# every unit the arrays made, computes whatever a failed job left, and writes every table, the grid and
# results/report.md. Submitting again after a failure continues where the runs stopped: a unit is skipped when it
# is done, taken over when the job holding it died (docs/methods.md, "Several jobs").
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-6}
GPUS=${GPUS:-1}
PRESET=${PRESET:-paper}
read -r -a extra <<< "${SBATCH_ARGS:-}"
submit=(sbatch --parsable --gres="gpu:$GPUS" --cpus-per-task=$(( 8 * GPUS )) --output=results/logs/slurm-%x-%A_%a.out
        "${extra[@]}")

bash run_all.sh setup  # the venv once, before jobs that share it start
mkdir -p results/logs
previous=""
for step in train behaviour neurons ablate shared conflict; do
  previous=$("${submit[@]}" --job-name="rmt-$step" --array="1-$JOBS" ${previous:+--dependency=afterany:$previous} \
    --wrap "SHARD=\$SLURM_ARRAY_TASK_ID/$JOBS STEP=$step bash run_all.sh --preset $PRESET")
  echo "$step: job array $previous ($JOBS jobs)"
done
tables=$("${submit[@]}" --job-name=rmt-tables --dependency="afterany:$previous" --wrap "bash run_all.sh --preset $PRESET")
echo "tables, grid and report: job $tables (results/report.md when it ends)"
