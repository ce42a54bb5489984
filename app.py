"""Serve the mmchat chat app (also the Hugging Face Space's `app_file`).

    python app.py --model models/mmchat-shapes --quantization auto --device auto --port 7860

Every flag has an environment variable, so a Space is configured in its settings, not its code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def default_model() -> str:
    """`models/mmchat-shapes` beside this file, so `python path/to/app.py` finds it too."""
    path = Path(__file__).resolve().parent / "models" / "mmchat-shapes"
    # Relative where possible (always on a Space): the UI shows this path in its model line.
    cwd = Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Chat about an image with an mmchat model.")
    parser.add_argument(
        "--model", default=env("MMCHAT_MODEL") or default_model(), help="checkpoint folder, hub id, or openai:http://HOST:PORT/v1#MODEL_ID for a model server (env MMCHAT_MODEL)"
    )
    parser.add_argument(
        "--quantization",
        default=env("MMCHAT_QUANTIZATION", "auto"),
        choices=["auto", "nf4", "int8", "none"],
        help="auto: nf4 on a GPU, none on the CPU (env MMCHAT_QUANTIZATION)",
    )
    parser.add_argument(
        "--device", default=env("MMCHAT_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N (env MMCHAT_DEVICE)"
    )
    parser.add_argument(
        "--dtype",
        default=env("MMCHAT_DTYPE", "auto"),
        choices=["auto", "bfloat16", "float32"],
        help="weights' precision where not quantized; auto: bfloat16 on a GPU or a CPU with AMX, else float32 (env MMCHAT_DTYPE)",
    )
    # Spaces and containers set GRADIO_SERVER_NAME=0.0.0.0; locally, stay off the network.
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("PORT") or env("GRADIO_SERVER_PORT") or 7860),
        help="env PORT or GRADIO_SERVER_PORT",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(env("MMCHAT_CONCURRENCY") or 0),
        help="answers generated at once; more queue up. 0: the model's default, 64 in this process (the engine "
        "batches them) and 16 for a model server (env MMCHAT_CONCURRENCY)",
    )
    parser.add_argument(
        "--lanes",
        type=int,
        default=int(env("MMCHAT_LANES") or 0),
        help="schedulers side by side over the one model; 0 (the default): the family's choice, two for "
        "mmchat on a CPU of two cores or more, else one (env MMCHAT_LANES)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(env("MMCHAT_THREADS", "1")),
        help="torch CPU threads; 1 (the default) is fastest on a small or shared CPU, where the engine's "
        "batching is the parallelism; 0 keeps torch's default (env MMCHAT_THREADS)",
    )
    parser.add_argument(
        "--eager",
        action="store_true",
        default=env("MMCHAT_EAGER", "") == "1",
        help="run the model's forwards eagerly, not through graphs traced at start-up (the same answers, "
        "slower on a CPU; env MMCHAT_EAGER=1)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=int(env("MMCHAT_MAX_QUEUE", "64")),
        help="waiting requests before new ones are refused with 'queue is full, try again' (env MMCHAT_MAX_QUEUE)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # On a ZeroGPU Space, `spaces` is imported before torch sets up CUDA (mmchat.serving.ui wraps
    # each answer in `spaces.GPU`); elsewhere the package is absent and this does nothing.
    with contextlib.suppress(ImportError):
        import spaces  # noqa: F401
    # Imported here so that `--help` and bad flags answer at once, without loading torch.
    from mmchat.serving.engine import ChatEngine, LoadError
    from mmchat.serving.process import configure_process, freeze_start_up_heap
    from mmchat.serving.ui import CSS, MAX_FILE_SIZE, build_demo, zero_gpu

    configure_process(args.threads)  # torch threads; a short GIL switch interval (mmchat.serving.process)

    try:
        # On ZeroGPU each answer has the GPU only inside its own `spaces.GPU` call: no scheduler thread.
        engine = ChatEngine.from_pretrained(
            args.model,
            quantization=args.quantization,
            device=args.device,
            dtype=args.dtype,
            threaded=not zero_gpu(),
            lanes=args.lanes or None,
        )
    except LoadError as e:
        print(f"mmchat: cannot start: {e}", file=sys.stderr)
        return 2
    if not args.eager:
        # About 13 s for the shipped model on a 2-core CPU: served eagerly meanwhile, each graph
        # used as soon as it is traced.
        engine.trace(wait=False, done=lambda kept, tried, s: print(f"mmchat: traced {kept} of {tried} graphs in {s:.1f} s", flush=True))
    concurrency = args.concurrency or engine.adapter.default_concurrency
    lanes = f" over {len(engine.schedulers)} lanes" if len(engine.schedulers) > 1 else ""
    print(f"mmchat: serving {engine.describe()}, {concurrency} answer(s) at once{lanes}", flush=True)
    demo = build_demo(engine)
    # Gradio sets matplotlib's backend around every event; where matplotlib is installed, resolving it
    # the first time imports pyplot: 0.4 s the first visitor's answer waited for. Resolved now instead.
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.get_backend()
    for scheduler in engine.schedulers:  # each batches up to as many answers as the Gradio queue feeds it
        scheduler.max_batch = concurrency
    # Gradio's queue recomputes the request statistics of its "View API" page (a pandas table of
    # up to the last 10,000 events) after every event unless told otherwise: 3 ms of CPU an answer
    # on a fresh app, 6 ms after 2,000 answers, 18 ms after 10,000. Every 100 events is as good for
    # that page. Read when the queue is made; a value set by the user is kept.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
    demo.queue(default_concurrency_limit=concurrency, max_size=args.max_queue)
    freeze_start_up_heap()  # what start-up made lives on: no full garbage collection walks it again
    # Each answer in flight holds one of Gradio's worker threads while it waits for its tokens.
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=MAX_FILE_SIZE,
        max_threads=max(40, concurrency + 8),
        css=CSS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
