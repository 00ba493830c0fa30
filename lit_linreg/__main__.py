from lit_linreg.cli import main

raise SystemExit(main())
