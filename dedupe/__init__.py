"""Near-duplicate removal: MinHash and LSH banding as pure numpy functions (:mod:`.minhash`),
connected components as steps over grouped data (:mod:`.components`), and their Beam transforms
(:mod:`.beam`). Imports only the core; used by :mod:`gristmill.pipelines`."""
