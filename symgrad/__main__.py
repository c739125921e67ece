from symgrad.cli.main import main

main()
