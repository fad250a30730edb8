from featurelake.cli.main import main

main()
