"""`python -m lit_linreg.deploy.resolve OUT ARGS`: the first step of `serve ARGS` alone, its servable written to OUT.

Started by launch.py while the server starts: the whole CLI checks ARGS and reduces the trained model as `serve`
does (serve_cli.py), every mistake one line on stderr and exit code 2; but the servable goes to OUT, for the
server already running, and the port, which that server holds, is not tried. It then exits at once, without
Python's teardown of torch and Lightning (about a second), which the server would wait for.
"""

import gc
import os
import sys
from pathlib import Path

gc.disable()  # while importing Lightning: see lit_linreg/__main__.py and `freeze_imports`

from lit_linreg.cli.main import freeze_imports, main  # noqa: E402
from lit_linreg.deploy import serve_cli  # noqa: E402

if __name__ == "__main__":
    freeze_imports()  # a process of its own: see `freeze_imports`
    serve_cli.HAND_OVER = Path(sys.argv[1])
    code = main(["serve", *sys.argv[2:]])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
