from lit_linreg.cli.main import main

raise SystemExit(main())
