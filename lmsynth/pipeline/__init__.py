"""Generation pipelines: translate, flag, generate, judge, select, second turn, on distilabel + vLLM."""
