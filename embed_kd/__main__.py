from embed_kd.cli import main

main()
