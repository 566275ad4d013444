"""Hounsfield units of the phantom's tissues (unenhanced CT), in one place so images and tests agree."""

AIR = -1000.0
SUBCUTANEOUS_FAT = -100.0
MEDIASTINAL_FAT = -80.0
MUSCLE = 50.0
BLOOD = 42.0  # heart, aorta and pulmonary vessels without contrast
LIVER = 58.0
ABDOMEN = 50.0  # spleen and stomach wall under the left hemidiaphragm
CANCELLOUS_BONE = 260.0
CORTICAL_BONE = 900.0
CARTILAGE = 120.0
DISC = 80.0
SPINAL_CORD = 38.0
LUNG = -870.0
LUNG_DEPENDENT_GAIN = 45.0  # supine lungs are denser posteriorly (gravity), by up to this much
LUNG_TEXTURE = 15.0
FISSURE = -520.0
AIRWAY_WALL = 40.0
PLEURAL_FLUID = 8.0
CONSOLIDATION = 20.0
CONSOLIDATION_TEXTURE = 25.0
NODULE = 30.0
EMPHYSEMA = -985.0
