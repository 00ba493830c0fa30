"""`python -m lit_linreg.deploy SERVABLE`: the lean HTTP server that `serve` replaces its process with (serve.py).

Not a command to type: `python -m lit_linreg serve --config C --ckpt_path CKPT` writes the SERVABLE file (a
trained model reduced to what serving needs) and starts this. Here, and in every worker LitServe starts, nothing
imports Lightning.
"""

from lit_linreg.deploy.serve import main

raise SystemExit(main())
