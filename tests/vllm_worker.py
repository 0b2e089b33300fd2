"""Run by tests/test_vllm.py with the vLLM environment's python (the project on PYTHONPATH): score image files
with the HF backend (that environment's transformers) and with vLLM's offline engine, and print one JSON line.

    PYTHONPATH=. $ENV/bin/python tests/vllm_worker.py --model tiny a.png b.png [--tensor-parallel-size 2] [--no-hf]
"""

import argparse
import json
import sys
import time


def readouts(scorer, images: list[str]) -> dict:
    out = {}
    for readout in ("first-digit", "number"):
        details = scorer.score_details(images, readout=readout)
        out[readout] = {
            name: None if getattr(details, name) is None else getattr(details, name).tolist()
            for name in ("scores", "std", "probs", "digit_mass", "dot_mass")
        }
    out["greedy"] = [rating.text for rating in scorer.generate(images, do_sample=False, max_new_tokens=12)]
    out["fingerprint"] = scorer.backend.fingerprint()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args()

    import transformers

    from vq_reward import VisualQualityScorer

    result: dict = {"transformers": transformers.__version__}
    if not args.no_hf:
        result["hf"] = readouts(VisualQualityScorer.from_pretrained(args.model), args.images)
    start = time.perf_counter()
    scorer = VisualQualityScorer.from_pretrained(
        args.model, backend="vllm", tensor_parallel_size=args.tensor_parallel_size
    )
    result["vllm_start_s"] = time.perf_counter() - start
    result["vllm"] = readouts(scorer, args.images)
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
