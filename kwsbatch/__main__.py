from kwsbatch.cli import main

raise SystemExit(main())
