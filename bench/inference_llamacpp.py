"""llama.cpp's decode speed on the default model's own GGUF: the baseline of ``--llama-cpp``.

Runs in ``.venv-llamacpp`` (``make llamacpp-env``: llama-cpp-python, which
compiles llama.cpp for this CPU), not in the project's venv, and imports
nothing of ours. ``bench/inference.py --llama-cpp`` starts it once per thread
count:

    .venv-llamacpp/bin/python bench/inference_llamacpp.py GGUF --threads 1 --tokens 128 \
        --rounds 5 --prompt TEXT

and reads one JSON line: the median decode tokens/s (llama.cpp's own
counters: generated tokens over the time spent generating them, prefill
excluded, as the engines report ``timings.tokens_per_s``), and the rounds.
Greedy, the GGUF's own chat template, the same prompt as the engines.
"""

from __future__ import annotations

import argparse
import json
import statistics


def main() -> None:
    import llama_cpp

    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--prompt", required=True)
    args = parser.parse_args()

    llm = llama_cpp.Llama(
        model_path=args.gguf,
        n_ctx=1024,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        seed=0,
        verbose=False,
    )
    messages = [{"role": "user", "content": args.prompt}]

    def once(tokens: int) -> tuple[int, float]:
        llm.reset()  # no prompt state kept from the round before: each round reads the prompt anew
        llama_cpp.llama_perf_context_reset(llm.ctx)
        llm.create_chat_completion(messages=messages, max_tokens=tokens, temperature=0.0, top_k=1)
        perf = llama_cpp.llama_perf_context(llm.ctx)
        return perf.n_eval, perf.t_eval_ms

    once(4)  # warm
    rates, counts = [], []
    for _ in range(args.rounds):
        n, ms = once(args.tokens)
        counts.append(n)
        rates.append(n / (ms / 1000) if ms > 0 else 0.0)
    print(
        json.dumps(
            {
                "tokens_per_s": statistics.median(rates),
                "rounds": rates,
                "tokens": counts,
                "version": llama_cpp.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
