from whistle.cli import main

main()
