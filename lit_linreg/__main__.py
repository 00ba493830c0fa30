import sys

if sys.argv[1:2] == ["serve"]:  # before Lightning's import: the server starts while the CLI resolves the model
    from lit_linreg.deploy.launch import main

    raise SystemExit(main(sys.argv[2:]))

from lit_linreg.cli.main import main  # noqa: E402

raise SystemExit(main())
