"""Names of the files in a run folder and a sweep folder: what `train`, `sweep`, `report` and
`eval` agree on. Torch-free, so reading a folder's layout costs nothing."""

ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.toml"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOCK_FILE = ".pace-lock"

SWEEP_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
GRID_FOLDER = "runs"  # DIR/runs/<setting>_seed-<s>/
FINAL_FOLDER = "final"  # DIR/final/<setting>_seed-<s>/
TEST_FILE = "test.json"  # a final run's test score (under shots: beside the grid run's adapter it scored)
