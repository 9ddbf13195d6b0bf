"""Index side of fusionindex: vectors and files in, FAISS indexes out.

No model code and no Beam here: `pipelines/` wraps these functions for the CLI.
"""
