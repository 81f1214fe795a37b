#!/usr/bin/env bash
# pose-lora on SmolLM2-135M-Instruct with YaRN x2 (8k -> 16k): perplexity at 16k tokens and
# passkey at 16k before and after a short LoRA fine-tune on CPython's pydoc topics (offline prose).
#     nice -n 19 bash bench/finetune_pose.sh [STEPS]
set -euo pipefail
STEPS=${1:-30}
BIN=.venv/bin
mkdir -p build
$BIN/python -c "from pydoc_data.topics import topics; open('build/topics.txt', 'w').write('\n\n'.join(topics[k] for k in sorted(topics)))"
rm -rf build/smollm2-yarn2-pose
time $BIN/ctxext finetune smollm2 --method yarn --factor 2 --recipe pose-lora --data build/topics.txt \
    --steps "$STEPS" --seq-len 1024 --save-every 10 --out build/smollm2-yarn2-pose --merge
[ -d build/smollm2-yarn2 ] || $BIN/ctxext patch --method yarn --factor 2 --output build/smollm2-yarn2 smollm2
time $BIN/ctxext passkey build/smollm2-yarn2 --length 16000 --depths 0,0.5,1
time $BIN/ctxext passkey build/smollm2-yarn2-pose/merged --length 16000 --depths 0,0.5,1
