from fdrl.cli import main

raise SystemExit(main())
