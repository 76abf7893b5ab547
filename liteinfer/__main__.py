from liteinfer.cli import main

raise SystemExit(main())
