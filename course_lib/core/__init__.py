"""The course's infrastructure, beneath every chapter; it imports nothing outside core/.

    env        device choice, seeds, library settings, the canonical environment, torch_threads
    profile    small / large workloads (COURSE_PROFILE)
    canonical  `make test` and `make outputs`: the canonical environment, notebooks executed in place
    nbval_plugin  pytest plugin: strict nbval with the course's sanitizers
    results    data/results/*.json: save, load, show, merge with a live run
    optional   cells that need a library: run live, or show what the canonical run recorded
    tables, plotting   fmt, print_table; the course's matplotlib style
    timing     median and interleaved timers, device_slug, the machine's copy and matmul roofs
    bootstrap  the notebooks' first cell on Colab (standard library only, run by path)
    wheelhouse the offline GPU machine's wheels (`make wheelhouse`)
"""
