"""Out-of-core paths for large training sets: sharded, resumable featurization into the workspace
(`featurize`), run by an executor (local processes or Ray); the bounded top-k and FAISS search over such
features live in `backend.bounded` / `backend.knn`."""
