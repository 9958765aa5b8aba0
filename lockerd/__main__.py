from lockerd.cli import main

raise SystemExit(main())
