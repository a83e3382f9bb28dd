"""/classify's scoring: the class matrix (`matrix`), kept in step with the database (`sync`),
scored on the CPU or the model's device (`scorer`), fed by the micro-batcher (`batcher`)."""
