from flamenco_deadline_worker.cli import main

raise SystemExit(main())
