"""The ``sasreid`` console script: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their command runs, so ``sasreid --help`` stays fast and a broken optional
dependency of one command cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys

# (name, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("model-info", "model.info", "parameter counts, descriptor size and GFLOPs of a model config"),
    ("synth", "model.data.synth.cli", "generate the SynthXFD synthetic far-distance benchmark"),
    ("train", "model.engine.train_cli", "train SAS-VPReID on a dataset folder"),
    ("evaluate", "model.engine.evaluate_cli", "evaluate a checkpoint on the A->G, G->A, A->A cases"),
    ("export", "model.export", "export a checkpoint's embedding path to ONNX"),
    ("serve", "service.serve_cli", "run the retrieval API server"),
    ("enroll", "service.client_cli", "enroll a dataset folder's gallery tracklets over HTTP"),
    ("query", "service.client_cli", "query the server with one tracklet folder"),
    ("reembed", "service.reembed_cli", "re-embed a stored gallery with a new checkpoint"),
    ("gallery", "service.gallery_cli", "gallery maintenance: `gallery migrate` copies it into Milvus"),
]


def _load(module: str):
    return importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sasreid",
        description="SAS-VPReID: video person re-identification at extreme far distances.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _command=name)
        # Subcommand arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = {name: (module, help_text) for name, module, help_text in COMMANDS}
    if argv and argv[0] in known:
        name = argv[0]
        module_name, help_text = known[name]
        module = _load(module_name)
        sub = argparse.ArgumentParser(prog=f"sasreid {name}", description=help_text)
        add = module.add_arguments
        # A module serving several commands (enroll/query) takes the command name too.
        if len(inspect.signature(add).parameters) >= 2:
            add(sub, name)
        else:
            add(sub)
        args = sub.parse_args(argv[1:])
        args._command = name
        runner = module.run
        try:
            return int(runner(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    parser.parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
