from logship.cli.main import main

raise SystemExit(main())
