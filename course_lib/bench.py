"""The benchmarks whose results are committed under data/results/ (``make bench`` runs the GPU ones).

    python -m course_lib.bench roofline [--name h100_roofline]
    python -m course_lib.bench prefill-decode [--name h100_prefill_decode]
    python -m course_lib.bench gptq-time [--device cpu|cuda] [--tools ...] [--bits 4 3] [--threads 2]
    python -m course_lib.bench awq-time [--device cpu|cuda] [--tools ...] [--bits 4] [--threads 2]
    python -m course_lib.bench gptq-grids [--seeds 0 1 2 3 4] [--bits 4] [--threads 1]  (CPU: chapter 03's RTN grids)
    python -m course_lib.bench qat-control [--lrs 5e-4 1e-4 3e-5 1e-5] [--threads 1]  (CPU: chapter 02's QAT control)
    python -m course_lib.bench awq-seeds [--seeds 0 1 2 3 4] [--bits 4 3] [--eval-tokens 8192 16384]  (CPU: ch. 04)
    python -m course_lib.bench bnb [--device cuda|cpu] [--part all|speed|finetune] [--quick] [--threads N]  (chapter 05)
    python -m course_lib.bench kv-decode [--device cpu|cuda] [--model tiny] [--threads 2] [--name ...]
    python -m course_lib.bench attention [--name ...] [--tune quick|full] [--smoke]
    python -m course_lib.bench attention-train [--name ...] [--smoke]
    python -m course_lib.bench dequant-matmul [--name ...]   (chapter 11: the PyTorch baseline)
    python -m course_lib.bench memory [--name ...] [--quick]   (chapter 11: the estimator against the GPU allocator)
    python -m course_lib.bench w4a16 [--name ...] [--quick] [--parts step ladder ...]  (chapter 11: the fused kernel)
    python -m course_lib.bench sparse24 [--name ...]
    python -m course_lib.bench prune-sweep [--threads 1] [--name ...]     (CPU: chapter 07's perplexity sweep)
    python -m course_lib.bench distill [--profile large] [--part all|white|extras|encoder|seeds] [--name ...]  (chapter 08)
    python -m course_lib.bench gguf [--threads 1] [--models ...] [--name ...]  (CPU: chapter 06, llama.cpp)
    python -m course_lib.bench mixed [--models ...] [--seeds 0 1 2] [--threads 2]  (CPU: chapter 06, the allocator)
    python -m course_lib.bench serving [--device cuda|cpu] [--models ...] [--repeats 3] [--threads N]  (chapter 13)
    python -m course_lib.bench leaderboard [--device cpu|cuda] [--models ...] [--variants ...] [--quick] [--threads N]  (chapter 12)

Each benchmark lives in the package of the chapter it serves (kernels.bench, pipeline.model_eval,
gptq.bench, awq.bench, bnb.bench, quant.bench, kv.bench, attention.bench, kernels.dequant_bench,
kernels.w4a16_bench, memory.measure, prune.sparse_bench, prune.teach, distill.experiments,
distill.seeds, mixed.gguf_bench, mixed.bench, serving.bench, eval.leaderboard); this module only parses the command line and calls it. The shared timers are
in core.timing.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    roof = sub.add_parser("roofline", help="decode vs prefill: a Llama-7B linear layer at 1..4096 tokens")
    roof.add_argument("--name", default=None, help="result file name (default: <gpu>_roofline)")
    pd = sub.add_parser("prefill-decode", help="the bundled model: prefill vs decode time per token")
    pd.add_argument("--name", default=None, help="result file name (default: <gpu>_prefill_decode)")
    ev = sub.add_parser("model-eval", help="the bundled model: perplexities and lm-eval scores, GPU bf16 and CPU fp32")
    ev.add_argument("--name", default=None, help="result file name (default: <gpu>_course_model_eval)")
    rm = sub.add_parser("real-model", help="the real model (SmolLM2-135M): perplexity, RTN/GPTQ/AWQ, keep-1%%, W8A8, "
                        "lm-eval, in float32")
    rm.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    rm.add_argument("--part", default="all", choices=["all", "eval", "quant"],
                    help="eval: float perplexities and lm-eval; quant: RTN/GPTQ/AWQ, keep-1%%, W8A8 (default: both)")
    rm.add_argument("--quick", action="store_true", help="a few minutes on a CPU: 4 x 128 calibration, 512 tokens")
    rm.add_argument("--name", default=None, help="result file name (default: <gpu>_smollm2, cpu_smollm2; _eval added for --part eval)")
    bn = sub.add_parser("bnb", help="chapter 05: 16-bit vs LLM.int8() vs NF4/FP4 (memory, perplexity, time per "
                        "token) and QLoRA vs LoRA vs full fine-tuning")
    bn.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    bn.add_argument("--part", default="all", choices=["all", "speed", "finetune"])
    bn.add_argument("--quick", action="store_true", help="fewer tokens, steps and repetitions")
    bn.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    bn.add_argument("--lr-mult", type=float, default=1.0, help="--part finetune: every learning rate times this")
    bn.add_argument("--name", default=None, help="result file name (default: <gpu>_bnb or cpu_bnb, _<part> added)")
    from .awq.bench import AWQ_TOOLS
    from .gptq.bench import GPTQ_TOOLS

    time_tools = {"gptq": GPTQ_TOOLS, "awq": AWQ_TOOLS}
    for method, default_bits in (("gptq", [4, 3]), ("awq", [4])):
        gt = sub.add_parser(f"{method}-time", help=f"{method.upper()} wall time and perplexity: course_lib vs "
                            "llm-compressor vs GPTQModel")
        gt.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where course_lib quantizes")
        gt.add_argument("--bits", type=int, nargs="+", default=default_bits)
        gt.add_argument("--tools", nargs="+", default=list(time_tools[method]),
                        choices=time_tools[method])
        gt.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        gt.add_argument("--repeats", type=int, default=1, help="runs per tool; the median time is recorded")
        gt.add_argument("--name", default=None, help=f"result file name (default: <device>_{method}_time)")
    aw = sub.add_parser("awq-seeds", help="chapter 04: GPTQ vs AWQ perplexity over several calibration draws, on CPU")
    aw.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    aw.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    aw.add_argument("--eval-tokens", type=int, nargs="+", default=[8192, 16384],
                    help="score each model on the first N test tokens, for each N (default: 8192 16384)")
    aw.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    aw.add_argument("--name", default=None, help="result file name (default: cpu_awq_gptq_seeds)")
    gg = sub.add_parser("gptq-grids", help="chapter 03: RTN and GPTQ on the three 4-bit grids over several "
                        "calibration draws, on CPU")
    gg.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    gg.add_argument("--bits", type=int, nargs="+", default=[4])
    gg.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    gg.add_argument("--name", default=None, help="result file name (default: cpu_gptq_grids)")
    qc = sub.add_parser("qat-control", help="chapter 02: QAT and its plain fine-tune control at several learning "
                        "rates, on CPU")
    qc.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-4, 3e-5, 1e-5])
    qc.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    qc.add_argument("--name", default=None, help="result file name (default: cpu_qat_control)")
    kv = sub.add_parser("kv-decode", help="time per decode step against position, with/without the KV cache")
    kv.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    kv.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    kv.add_argument("--model", default=None, choices=["course-model", "llama-1b-shape", "tiny"],
                    help="default: the bundled model on cpu (eager); random weights in Llama-3.2-1B's shapes on "
                         "cuda (CUDA graphs); tiny: the GPU benchmark's code at toy sizes (a smoke test)")
    kv.add_argument("--name", default=None, help="result file name (default: <device>_kv_decode)")
    at = sub.add_parser("attention", help="attention forward: naive, SDPA backends and the course Triton kernel")
    at.add_argument("--name", default=None, help="result file name (default: <gpu>_attention)")
    at.add_argument("--tune", choices=("quick", "full"), default=None,
                    help="the course kernel's autotuning: 2 or 7 configurations (default: COURSE_FLASH_TUNE, else full)")
    at.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the code, records nothing real")
    atr = sub.add_parser("attention-train", help="attention forward + backward: the course kernels vs SDPA flash, "
                         "efficient and cuDNN, causal, non-causal and GQA")
    atr.add_argument("--name", default=None, help="result file name (default: <gpu>_attention_train)")
    atr.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the code, records nothing real")
    dq = sub.add_parser("dequant-matmul", help="chapter 11: 4-bit dequantize-then-matmul in PyTorch vs fp16 "
                        "cuBLAS at Llama-3-8B decode shapes")
    dq.add_argument("--name", default=None, help="result file name (default: <gpu>_dequant_matmul)")
    me = sub.add_parser("memory", help="chapter 11: estimated memory vs the CUDA allocator's peak over models x "
                        "dtypes x batches x contexts, prefill and decode")
    me.add_argument("--name", default=None, help="result file name (default: <gpu>_memory)")
    me.add_argument("--quick", action="store_true", help="two small models, batches 1 and 4, contexts 128 and 1024")
    me.add_argument("--models", nargs="+", default=None, help="only these models of the grid, e.g. smollm2-135m")
    wq = sub.add_parser("w4a16", help="chapter 11: the fused W4A16 Triton kernel vs fp16 cuBLAS on a Llama-3-8B "
                        "decode step (CUDA graphs), the tricks one by one, prefill, end to end")
    wq.add_argument("--name", default=None, help="result file name (default: <gpu>_w4a16)")
    wq.add_argument("--quick", action="store_true", help="8 layers, batches 1 and 16, fewer repetitions")
    wq.add_argument("--parts", nargs="+", default=[],
                    choices=["step", "per_linear", "ladder", "fused", "bf16", "prefill", "end_to_end"])
    sp = sub.add_parser("sparse24", help="2:4 sparse (cuSPARSELt, CUTLASS) vs dense vs CSR matmuls at Llama shapes")
    sp.add_argument("--name", default=None, help="result file name (default: <gpu>_sparse24)")
    ps = sub.add_parser("prune-sweep", help="chapter 07: perplexity of the course model pruned by magnitude, Wanda "
                        "and SparseGPT at 10-70%% and N:M, on CPU")
    ps.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: as the notebooks' canonical run)")
    ps.add_argument("--name", default=None, help="result file name (default: cpu_prune_sweep)")
    ds = sub.add_parser("distill", help="chapter 08: four students (CE, logit KD, sequence-level KD, KD on the "
                        "teacher's text), context distillation, the encoder, and the compression table")
    ds.add_argument("--profile", default="large", choices=["small", "medium", "large"])
    ds.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    ds.add_argument("--part", default="all", choices=["all", "white", "extras", "encoder", "seeds"],
                    help="white: the four students and the compression table; extras: decoding, context distillation, "
                         "the encoder; encoder: the encoder experiment over --seeds; seeds: the CE-only and logit-KD "
                         "students over --seeds, trained concurrently (not part of all)")
    ds.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of --part encoder and seeds")
    ds.add_argument("--steps", type=int, default=None, help="--part seeds: fewer training steps than the profile's")
    ds.add_argument("--workers", type=int, default=None,
                    help="--part seeds: trainings at once, one process each (default: all on CUDA, 1 on CPU)")
    ds.add_argument("--name", default=None, help="result file name (default: <device>_distill[_extras])")
    gb = sub.add_parser("gguf", help="chapter 06: the course's GGUF files (gguf_io and llama.cpp's k-quants) in "
                        "transformers and llama.cpp: size, bits per weight, perplexity, tokens, greedy ids, tokens/s")
    gb.add_argument("--threads", type=int, default=1, help="llama.cpp and torch CPU threads (default: 1)")
    gb.add_argument("--models", nargs="+", default=["course-model", "smollm2-135m"])
    gb.add_argument("--name", default=None, help="result file name (default: cpu_gguf)")
    mx = sub.add_parser("mixed", help="chapter 06: uniform GPTQ against the bits-per-weight allocator, perplexity "
                        "at equal size over calibration seeds, on CPU")
    mx.add_argument("--models", nargs="+", default=["course-model", "smollm2-135m"])
    mx.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    mx.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    mx.add_argument("--name", default=None, help="result file name (default: cpu_mixed)")
    sv = sub.add_parser("serving", help="chapter 13: one-at-a-time generate vs static batches vs the course engine, "
                        "prefix caching, FP8 KV cache, speculative decoding")
    sv.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    sv.add_argument("--models", nargs="+", default=None,
                    help="course-model, smollm2-135m, llama-1b-shape (default: those set up for the device)")
    sv.add_argument("--repeats", type=int, default=3, help="engine runs per setting (median and range recorded)")
    sv.add_argument("--quick", action="store_true", help="a quarter of the requests")
    sv.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sv.add_argument("--name", default=None, help="result file name (default: <gpu>_serving or cpu_serving)")
    lb = sub.add_parser("leaderboard", help="chapter 12: every compressed variant of both models in one table (bytes, "
                        "bits per weight, perplexity with intervals, lm-eval, time per token)")
    lb.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    lb.add_argument("--models", nargs="+", default=["course-model", "smollm2-135m"])
    lb.add_argument("--quick", action="store_true", help="fewer tokens, items and calibration windows (a smoke run)")
    lb.add_argument("--threads", type=int, default=None, help="torch CPU threads (and llama.cpp's)")
    lb.add_argument("--name", default=None, help="result file name (default: cpu_leaderboard or <gpu>_leaderboard)")
    lb.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                    help="only these variants, quoted (e.g. 'GPTQ 4-bit'); the file's other rows stay")
    args = parser.parse_args(argv)
    try:
        if args.bench == "roofline":
            from .kernels.bench import record_roofline

            record_roofline(args.name)
        elif args.bench == "prefill-decode":
            from .kernels.bench import record_prefill_decode

            record_prefill_decode(args.name)
        elif args.bench == "model-eval":
            from .pipeline.model_eval import record_model_eval

            record_model_eval(args.name)
        elif args.bench == "real-model":
            from .awq.real_bench import record_real_model

            record_real_model(args.name, args.device, quick=args.quick, part=args.part)
        elif args.bench == "bnb":
            from .bnb.bench import record_bnb

            record_bnb(args.name, args.device, part=args.part, quick=args.quick, threads=args.threads,
                       lr_mult=args.lr_mult)
        elif args.bench == "kv-decode":
            from .kv.bench import record_kv_decode

            record_kv_decode(args.name, device=args.device, threads=args.threads, model=args.model)
        elif args.bench == "attention":
            from .attention.bench import record_attention

            record_attention(args.name, tune=args.tune, smoke=args.smoke)
        elif args.bench == "attention-train":
            from .attention.bench_train import record_attention_train

            record_attention_train(args.name, smoke=args.smoke)
        elif args.bench == "dequant-matmul":
            from .kernels.dequant_bench import record_dequant_matmul

            record_dequant_matmul(args.name)
        elif args.bench == "memory":
            from .memory.measure import record_memory

            record_memory(args.name, args.quick, models=args.models)
        elif args.bench == "w4a16":
            from .kernels.w4a16_bench import record_w4a16

            record_w4a16(args.name, args.quick, tuple(args.parts))
        elif args.bench == "sparse24":
            from .prune.sparse_bench import record_sparse24

            record_sparse24(args.name)
        elif args.bench == "prune-sweep":
            from .prune.teach import record_sweep

            record_sweep(args.name, threads=args.threads)
        elif args.bench == "distill":
            if args.part == "seeds":
                from .distill.seeds import record_seeds

                record_seeds(args.name, profile=args.profile, seeds=tuple(args.seeds), steps=args.steps,
                             device=args.device, workers=args.workers)
            else:
                from .distill.experiments import record_distill

                record_distill(args.name, profile=args.profile, device=args.device, part=args.part,
                               seeds=tuple(args.seeds))
        elif args.bench == "mixed":
            from .mixed.bench import record

            record(args.name, models=tuple(args.models), seeds=tuple(args.seeds), threads=args.threads)
        elif args.bench == "gguf":
            from .mixed.gguf_bench import record_gguf

            record_gguf(args.name, threads=args.threads, model_names=tuple(args.models))
        elif args.bench == "serving":
            from .serving.bench import record_serving

            print(record_serving(args.device, args.models, repeats=args.repeats, quick=args.quick, name=args.name,
                                 threads=args.threads))
        elif args.bench == "awq-seeds":
            from .awq.bench import record_seed_spread

            record_seed_spread(args.name, seeds=tuple(args.seeds), bits=tuple(args.bits), threads=args.threads,
                               eval_tokens=tuple(args.eval_tokens))
        elif args.bench == "gptq-grids":
            from .gptq.bench import record_grid_spread

            record_grid_spread(args.name, seeds=tuple(args.seeds), bits=tuple(args.bits), threads=args.threads)
        elif args.bench == "qat-control":
            from .quant.bench import record_control_sweep

            record_control_sweep(args.name, lrs=tuple(args.lrs), threads=args.threads)
        elif args.bench == "gptq-time":
            from .gptq.bench import record_gptq_time

            record_gptq_time(args.device, tuple(args.bits), tuple(args.tools), args.threads, args.repeats, args.name)
        elif args.bench == "leaderboard":
            from .eval.leaderboard import record_leaderboard

            record_leaderboard(args.name, args.device, tuple(args.models), quick=args.quick, threads=args.threads,
                               variants=args.variants)
        elif args.bench == "awq-time":
            from .awq.bench import record_awq_time

            record_awq_time(args.device, tuple(args.bits), tuple(args.tools), args.threads, args.repeats, args.name)
    except (RuntimeError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
