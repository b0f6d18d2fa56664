"""The phases of a vLLM start, in the order vLLM goes through them. `serve` shows the current one."""

STARTING = "starting vLLM"
ENGINE = "starting the engine"
LOADING = "loading weights"
COMPILING = "compiling (torch.compile)"
PROFILING = "profiling memory"
KV_CACHE = "allocating the KV cache"
GRAPHS = "capturing CUDA graphs"
WARMUP = "warming up"
API_SERVER = "starting the API server"
SERVING = "API server up"

ORDER = (STARTING, ENGINE, LOADING, COMPILING, PROFILING, KV_CACHE, GRAPHS, WARMUP, API_SERVER, SERVING)
