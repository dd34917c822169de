"""The paper's experiment as one resumable recipe (`llm2clip-llava reproduce`): each tower of a YAML through
stage 1, stage 2, the benchmark list and `compare`, by the same entry points the single commands use."""
