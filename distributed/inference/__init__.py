"""Using trained models, Ray-free: the Predictor, batch prediction on Ray Data (Ray imported
inside), prediction outputs, scoring a fold, late fusion rules."""
