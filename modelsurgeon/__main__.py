from modelsurgeon.cli import main

main()
