"""Generation pipelines: translate, flag, generate, judge, select, second turn, on distilabel + vLLM."""

import warnings


# distilabel 1.5.3 puts `Field(default=None)` inside unions; current pydantic warns each time it builds them.
warnings.filterwarnings("ignore", message=r"The 'default' attribute with value None", module=r"pydantic\.")
