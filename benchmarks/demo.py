"""The main job's demo (README, `make demo`): grows with the workflow. Now: the model zoo table."""

from model_zoo import main

if __name__ == "__main__":
    main()
