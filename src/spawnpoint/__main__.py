from spawnpoint.cli import main

main()
