from icft.cli import main

raise SystemExit(main())
