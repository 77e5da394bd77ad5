#!/usr/bin/env bash
# The rest of the paper's study on the embedded digits (no download):
#  1. DSE as a training loss: digits.yaml with loss = CE + dse_weight * DSE(Z), dse_weight
#     0 (unregularised) and 0.05 (configs/digits_dse_regularised.yaml), seeds 1-3;
#  2. the contrastive condition: configs/digits_simclr.yaml (SimCLR, linear probe);
#  3. the information plane and the metric-accuracy correlations of the first sweep.
#
#   bash examples/dse_loss_and_simclr.sh          # 6 + 1 runs of 20 epochs: ~12 min on 2 idle CPU cores
#   EPOCHS=5 SEEDS=1 bash examples/dse_loss_and_simclr.sh   # a quick look
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
ROOT=${ROOT:-runs/dse_loss}
EPOCHS=${EPOCHS:-20}
SEEDS=${SEEDS:-1,2,3}

"$BIN/dse-monitor" sweep --config configs/digits.yaml --grid model.dse_weight=0,0.05 --seeds "$SEEDS" \
    --root "$ROOT" --trainer.max_epochs "$EPOCHS" --trainer.enable_progress_bar false \
    || echo "some runs failed (see above); comparing the others"
"$BIN/dse-monitor" compare "$ROOT" --metric dse,dsmi_y,dsmi_x --group-by model.dse_weight --out "$ROOT/dse_weight.png"
"$BIN/dse-monitor" compare "$ROOT" --plot info-plane --group-by model.dse_weight --out "$ROOT/info_plane.png"
"$BIN/dse-monitor" compare "$ROOT" --correlate val_acc --group-by model.dse_weight

"$BIN/dse-monitor" fit --config configs/digits_simclr.yaml --trainer.max_epochs "$EPOCHS" \
    --trainer.default_root_dir runs/digits_simclr --trainer.enable_progress_bar false
