"""TRL's GRPO peer (../../../shared/peers/trl_grpo.py) started from given weights.

The peer script unchanged, with two differences: its model starts from the GPT-2 weights in
``--weights`` (an ``.npz`` of GPT-2 state-dict arrays, written by ``benchmarks/sequences.py``
from scorefn's warm start of the same seed) instead of its own 750 supervised steps
(``--warmup-steps 0``), and after its result lines it prints the sampled reward of every RL
step (``curve`` and a JSON list). Both sides then run RL from the same weights, so that
their rewards compare at equal samples from an equal start.

The file also holds a few token rows and the logits scorefn's model gives them
(``check_tokens``, ``check_logits``): the loaded model must reproduce them (to 1e-4), or the
run stops with an error, so a wrong mapping of the weights cannot pass unnoticed.

    python benchmarks/peers/trl_grpo_from.py --weights warm.npz --steps 200 --seed 0

Run it with the TRL peer's venv (torch, trl, transformers, datasets).
"""

import argparse
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

SCRIPT = Path(__file__).resolve().parents[3] / "shared" / "peers" / "trl_grpo.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="the .npz of GPT-2 state-dict arrays")
    args, rest = parser.parse_known_args()
    stored = dict(np.load(args.weights))
    check_tokens, check_logits = stored.pop("check_tokens"), stored.pop("check_logits")
    model_class = transformers.GPT2LMHeadModel
    built = model_class.__init__
    loaded = []

    def init_from_weights(self, config, *args, **kwargs):
        """GPT-2's constructor, then the given weights (checked against their logits)."""
        built(self, config, *args, **kwargs)
        state = {name: torch.from_numpy(value) for name, value in stored.items()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to wte
            raise ValueError(f"weights do not fit GPT-2: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            logits = self(torch.from_numpy(check_tokens).long()).logits.numpy()
        error = float(np.max(np.abs(logits - check_logits)))
        if not error < 1e-4:
            raise ValueError(f"the loaded GPT-2's logits differ from scorefn's by {error:.2e}")
        loaded.append(error)

    # The class itself is patched: transformers' lazy module ignores a replaced attribute.
    model_class.__init__ = init_from_weights
    sys.argv = [str(SCRIPT), "--warmup-steps", "0", *rest]
    run = runpy.run_path(str(SCRIPT), run_name="__main__")
    if not loaded:
        raise RuntimeError("the peer script built no GPT2LMHeadModel: the weights were not used")
    print("curve " + json.dumps([h["reward"] for h in run["hist"]]), flush=True)


if __name__ == "__main__":
    main()
