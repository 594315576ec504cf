"""InterpBench: cases rebuilt offline (RASP programs, tracr in torch, SIIT) and circuit discovery by patching."""
