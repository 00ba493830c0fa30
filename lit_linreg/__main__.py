"""`python -m lit_linreg ARGS` and the `lit-linreg ARGS` script: one command, in a process of its own."""

import gc
import sys


def run() -> int:
    """Run the command `sys.argv` names; returns its exit code."""
    if sys.argv[1:2] == ["serve"]:  # before Lightning's import: the server starts while the CLI resolves the model
        from lit_linreg.deploy.launch import main as serve

        return serve(sys.argv[2:])
    # Importing torch and Lightning makes about 400,000 objects that live as long as the process; with the garbage
    # collector on, its full passes walk them again and again as they grow (about 0.7 s of a 4 s import, measured).
    # Off while importing; `main` freezes what the imports made and turns it back on (see `freeze_imports`).
    gc.disable()
    from lit_linreg.cli.main import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
