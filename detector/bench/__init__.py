"""The benchmarks' machinery (tools/bench_*.py parse and print): torch and torchvision only."""
