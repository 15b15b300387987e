from lowdiff_sched.cli.app import main

main()
